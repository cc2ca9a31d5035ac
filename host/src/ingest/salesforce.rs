//! Salesforce outbound messages: the SOAP 1.1 envelope Salesforce posts
//! (one to a hundred `Notification`s, each an `sObject` of fields), read
//! with a namespace-aware XML reader, and the two answers it understands:
//! the `notificationsResponse` Ack (delivered) and a SOAP fault (try again
//! later). See `../shared/docs/salesforce-outbound-messages.md`.
//!
//! Each notification becomes one JSON object of the sObject's fields,
//! named without their namespace prefix (`sf:Name` → `Name`). Values are
//! strings as sent (the envelope carries no types a receiver could trust
//! without the org's WSDL); `xsi:nil="true"` is `null`; a field with child
//! elements (a compound field) is an object of them.

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;
use serde_json::{Map, Value};

const SOAP_ENVELOPE: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const OUTBOUND: &str = "http://soap.sforce.com/2005/09/outbound";
const XML_SCHEMA_INSTANCE: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Salesforce never nests deeper; a deeper document is refused before it costs anything.
const MAX_DEPTH: usize = 16;

/// What the acknowledgement of a whole envelope looks like.
pub const ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body>
  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">
   <Ack>true</Ack>
  </notificationsResponse>
 </soapenv:Body>
</soapenv:Envelope>
"#;

/// Who is at fault, in SOAP's words: the sender (`Client`: do not send
/// that again as it is) or us (`Server`: try again later). Salesforce
/// retries either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    Client,
    Server,
}

/// A SOAP 1.1 fault saying why the envelope was not taken. The reason may
/// quote what the sender sent: characters XML cannot hold become U+FFFD.
pub fn fault(code: FaultCode, reason: &str) -> String {
    let code = match code {
        FaultCode::Client => "soapenv:Client",
        FaultCode::Server => "soapenv:Server",
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body>
  <soapenv:Fault>
   <faultcode>{code}</faultcode>
   <faultstring>{reason}</faultstring>
  </soapenv:Fault>
 </soapenv:Body>
</soapenv:Envelope>
"#,
        reason = escape(xml_text(reason))
    )
}

/// `text` with what XML 1.0 cannot carry (controls, U+FFFE, U+FFFF) replaced.
fn xml_text(text: &str) -> String {
    let allowed =
        |c: char| matches!(c, '\t' | '\n' | '\r' | ' '..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
    text.chars()
        .map(|c| if allowed(c) { c } else { char::REPLACEMENT_CHARACTER })
        .collect()
}

/// One outbound message, as far as Passerelle needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub organization_id: String,
    pub notifications: Vec<Notification>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The notification's own id: the same on every retry of it.
    pub id: String,
    /// From the sObject's `xsi:type` (`sf:Account` → `Account`).
    pub object_type: Option<String>,
    pub fields: Map<String, Value>,
}

/// An element of the document, with what the message needs of it.
#[derive(Debug, Default)]
struct Element {
    namespace: Option<String>,
    name: String,
    nil: bool,
    xsi_type: Option<String>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn is(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref() == Some(namespace) && self.name == name
    }

    fn child(&self, namespace: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.is(namespace, name))
    }
}

/// Salesforce sends 18-character ids; a configured 15-character one is
/// the same id without its case-safe suffix.
pub fn same_organization(configured: &str, received: &str) -> bool {
    match configured.len() {
        15 => received.get(..15) == Some(configured),
        _ => received == configured,
    }
}

/// Reads an envelope. The error says what is wrong with it.
pub fn parse(xml: &str) -> Result<OutboundMessage, String> {
    let root = read_tree(xml)?;
    if !root.is(SOAP_ENVELOPE, "Envelope") {
        return Err(format!("the document is <{}>, not a SOAP 1.1 Envelope", root.name));
    }
    let body = root.child(SOAP_ENVELOPE, "Body").ok_or("the Envelope has no Body")?;
    let notifications = body
        .child(OUTBOUND, "notifications")
        .ok_or("the Body has no notifications element of the outbound messaging namespace")?;
    let organization_id = notifications
        .child(OUTBOUND, "OrganizationId")
        .map(|element| element.text.trim().to_string())
        .filter(|id| !id.is_empty())
        .ok_or("notifications has no OrganizationId")?;
    let notifications: Vec<Notification> = notifications
        .children
        .iter()
        .filter(|child| child.is(OUTBOUND, "Notification"))
        .enumerate()
        .map(|(index, element)| {
            notification(element).map_err(|problem| format!("Notification {}: {problem}", index + 1))
        })
        .collect::<Result<_, _>>()?;
    if notifications.is_empty() {
        return Err("notifications has no Notification".into());
    }
    Ok(OutboundMessage {
        organization_id,
        notifications,
    })
}

fn notification(element: &Element) -> Result<Notification, String> {
    let id = element
        .child(OUTBOUND, "Id")
        .map(|id| id.text.trim().to_string())
        .filter(|id| !id.is_empty())
        .ok_or("no Id")?;
    let object = element
        .child(OUTBOUND, "sObject")
        .ok_or_else(|| format!("{id}: no sObject"))?;
    let fields = fields(object).map_err(|problem| format!("{id}: {problem}"))?;
    let object_type = object
        .xsi_type
        .as_deref()
        .map(|name| name.rsplit(':').next().unwrap_or(name).to_string());
    Ok(Notification {
        id,
        object_type,
        fields,
    })
}

fn fields(object: &Element) -> Result<Map<String, Value>, String> {
    let mut read = Map::new();
    for field in &object.children {
        let value = if field.nil {
            Value::Null
        } else if field.children.is_empty() {
            Value::String(field.text.clone())
        } else {
            Value::Object(fields(field)?)
        };
        if read.insert(field.name.clone(), value).is_some() {
            return Err(format!("field {} appears twice", field.name));
        }
    }
    Ok(read)
}

/// The document as a tree of elements; text between child elements
/// (indentation) is dropped.
fn read_tree(xml: &str) -> Result<Element, String> {
    let mut reader = NsReader::from_str(xml);
    let mut open: Vec<Element> = Vec::new();
    loop {
        let event = reader.read_event().map_err(|e| not_xml(&reader, e))?;
        match event {
            Event::Start(start) => {
                if open.len() == MAX_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_DEPTH}"));
                }
                open.push(element(&reader, &start)?);
            }
            Event::Empty(start) => {
                let element = element(&reader, &start)?;
                match open.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::End(_) => {
                let done = open.pop().ok_or("an end tag closes nothing")?;
                match open.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(text) => push_text(&mut open, &text.xml10_content())?,
            Event::CData(data) => push_text(&mut open, &data.xml10_content())?,
            Event::GeneralRef(reference) => push_text(&mut open, &resolve(&reference)?)?,
            Event::DocType(_) => return Err("a DOCTYPE is not allowed in a SOAP message".into()),
            Event::Eof => return Err("the document ends before its root element closes".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
}

fn not_xml(reader: &NsReader<&[u8]>, error: quick_xml::Error) -> String {
    format!("not well-formed XML at byte {}: {error}", reader.error_position())
}

fn element(reader: &NsReader<&[u8]>, start: &BytesStart) -> Result<Element, String> {
    let (namespace, name) = reader.resolver().resolve_element(start.name());
    let mut element = Element {
        namespace: match namespace {
            ResolveResult::Bound(Namespace(namespace)) => Some(namespace.to_string()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => return Err(format!("undeclared namespace prefix {prefix:?}")),
        },
        name: name.as_ref().to_string(),
        ..Element::default()
    };
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| format!("<{}>: bad attribute: {e}", element.name))?;
        let (namespace, local) = reader.resolver().resolve_attribute(attribute.key);
        if namespace != ResolveResult::Bound(Namespace(XML_SCHEMA_INSTANCE)) {
            continue;
        }
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("<{}>: bad attribute: {e}", element.name))?;
        match local.as_ref() {
            "nil" => element.nil = matches!(value.trim(), "true" | "1"),
            "type" => element.xsi_type = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(element)
}

fn push_text(open: &mut [Element], text: &str) -> Result<(), String> {
    match open.last_mut() {
        Some(element) => element.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err("text outside the root element".into()),
    }
    Ok(())
}

/// `&amp;`, `&#233;` and the like. Other entities would need a DTD, which
/// SOAP forbids.
fn resolve(reference: &BytesRef) -> Result<String, String> {
    let name = reference.xml10_content();
    if let Some(character) = reference.resolve_char_ref().map_err(|e| format!("&{name};: {e}"))? {
        return Ok(character.to_string());
    }
    resolve_predefined_entity(&name)
        .map(str::to_string)
        .ok_or_else(|| format!("unknown entity &{name};"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/events/salesforce-outbound-message.xml");

    fn with_notifications(notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D000000000001AAA</OrganizationId>
   {notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
        )
    }

    #[test]
    fn reads_the_shipped_example() {
        let message = parse(EXAMPLE).unwrap();
        assert_eq!(message.organization_id, "00D000000000001AAA");
        assert_eq!(message.notifications.len(), 1);
        let notification = &message.notifications[0];
        assert_eq!(notification.id, "04l000000000001AAA");
        assert_eq!(notification.object_type.as_deref(), Some("Account"));
        let expected = serde_json::json!({
            "Id": "001000000000001AAA",
            "Name": "Eleven Labs",
            "Status__c": "CLIENT_ACTIVE",
            "Country__c": "FR",
        });
        assert_eq!(Value::Object(notification.fields.clone()), expected);
    }

    #[test]
    fn reads_several_notifications_nil_fields_entities_and_any_prefix() {
        let xml = with_notifications(
            r#"<Notification><Id>n1</Id>
                <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                  <sf:Id>a1</sf:Id><sf:Name>Ben &amp; Jerry&#39;s &lt;FR&gt;</sf:Name>
                  <sf:Country__c xsi:nil="true"/><sf:Note><![CDATA[a <b> c]]></sf:Note>
                </sObject></Notification>
               <Notification><Id>n2</Id>
                <sObject xsi:type="s:Account" xmlns:s="urn:sobject.enterprise.soap.sforce.com">
                  <s:Id>a2</s:Id><s:Name></s:Name>
                </sObject></Notification>"#,
        );
        let message = parse(&xml).unwrap();
        let ids: Vec<&str> = message.notifications.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"]);
        let first = Value::Object(message.notifications[0].fields.clone());
        let expected =
            serde_json::json!({"Id": "a1", "Name": "Ben & Jerry's <FR>", "Country__c": null, "Note": "a <b> c"});
        assert_eq!(first, expected);
        let second = Value::Object(message.notifications[1].fields.clone());
        assert_eq!(second, serde_json::json!({"Id": "a2", "Name": ""}));
    }

    #[test]
    fn refuses_what_is_not_an_outbound_message() {
        let cases = [
            ("<a><b></a>", "not well-formed"),
            ("<Envelope/>", "not a SOAP 1.1 Envelope"),
            (&with_notifications("")[..], "no Notification"),
            (
                &with_notifications("<Notification><sObject/></Notification>")[..],
                "Notification 1: no Id",
            ),
            (
                &with_notifications("<Notification><Id>n1</Id></Notification>")[..],
                "n1: no sObject",
            ),
            (
                &with_notifications("<Notification><Id>n1</Id><sObject><Id>1</Id><Id>2</Id></sObject></Notification>")
                    [..],
                "field Id appears twice",
            ),
            (
                &EXAMPLE.replace("<sf:Name>", "<sf:Name>&bogus;"),
                "unknown entity &bogus;",
            ),
            (
                &EXAMPLE.replace(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
                    "<!DOCTYPE x [<!ENTITY e \"v\">]>",
                ),
                "DOCTYPE",
            ),
        ];
        for (xml, expected) in cases {
            let error = parse(xml).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?} for {xml}");
        }
        let nested = format!("{}x{}", "<a>".repeat(40), "</a>".repeat(40));
        assert!(parse(&nested).unwrap_err().contains("deeper than"));
    }

    /// Fuzz finding (`fuzz::a_fault_is_xml_that_says_its_reason`): a reason
    /// quoting a control character the sender sent made a fault that is
    /// not XML.
    #[test]
    fn a_fault_replaces_what_xml_cannot_hold() {
        let text = fault(FaultCode::Client, "organization 00D\u{1}\u{ffff} is not accepted");
        assert!(
            text.contains("organization 00D\u{fffd}\u{fffd} is not accepted"),
            "{text}"
        );
    }

    #[test]
    fn a_15_character_organization_id_matches_its_18_character_form() {
        assert!(same_organization("00D000000000001", "00D000000000001AAA"));
        assert!(same_organization("00D000000000001AAA", "00D000000000001AAA"));
        assert!(!same_organization("00D000000000002AAA", "00D000000000001AAA"));
        assert!(!same_organization("00D000000000002", "00D000000000001AAA"));
    }

    #[test]
    fn a_fault_escapes_its_reason() {
        let text = fault(FaultCode::Client, "organization <00D> & co");
        assert!(text.contains("<faultcode>soapenv:Client</faultcode>"), "{text}");
        assert!(text.contains("organization &lt;00D&gt; &amp; co"), "{text}");
        let ack = read_tree(ACK).unwrap();
        let response = ack
            .child(SOAP_ENVELOPE, "Body")
            .unwrap()
            .child(OUTBOUND, "notificationsResponse");
        assert_eq!(response.unwrap().child(OUTBOUND, "Ack").unwrap().text, "true");
    }
}

#[cfg(test)]
mod fuzz {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const TOKENS: &[&str] = &[
        "<",
        ">",
        "</",
        "/>",
        "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">",
        "<soapenv:Body>",
        "</soapenv:Body>",
        "<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">",
        "<OrganizationId>00D000000000001AAA</OrganizationId>",
        "<Notification>",
        "</Notification>",
        "<Id>n1</Id>",
        "<sObject>",
        "</sObject>",
        "<a>",
        "</a>",
        "xsi:nil=\"true\"",
        "&amp;",
        "&#0;",
        "&#x110000;",
        "&bogus;",
        "<![CDATA[",
        "]]>",
        "<!DOCTYPE x>",
        "<?xml version=\"1.0\"?>",
        "<!--",
        "-->",
        "\"",
        "=",
        " ",
    ];

    /// One notification: its id and its fields (`None` is `xsi:nil`).
    type Fields = BTreeMap<String, Option<String>>;

    /// Text an XML 1.0 document may hold, but `\r` (read back as `\n`).
    fn xml_text() -> impl Strategy<Value = String> {
        "[\t\n -\u{d7ff}\u{e000}-\u{fffd}]{0,12}"
    }

    fn notification() -> impl Strategy<Value = (String, Fields)> {
        let fields = prop::collection::btree_map("[A-Za-z][A-Za-z0-9_]{0,10}", proptest::option::of(xml_text()), 0..5);
        ("[A-Za-z0-9]{1,18}", fields)
    }

    fn envelope(organization: &str, notifications: &[(String, Fields)]) -> String {
        let mut body = String::new();
        for (id, fields) in notifications {
            body.push_str(&format!(
                r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Account">"#
            ));
            for (name, value) in fields {
                match value {
                    Some(value) => body.push_str(&format!("<sf:{name}>{}</sf:{name}>", escape(value.as_str()))),
                    None => body.push_str(&format!(r#"<sf:{name} xsi:nil="true"/>"#)),
                }
            }
            body.push_str("</sObject></Notification>");
        }
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="{SOAP_ENVELOPE}" xmlns:xsi="{XML_SCHEMA_INSTANCE}" xmlns:sf="urn:sobject">
 <soapenv:Body><notifications xmlns="{OUTBOUND}"><OrganizationId>{organization}</OrganizationId>{body}</notifications></soapenv:Body>
</soapenv:Envelope>"#
        )
    }

    /// XML 1.0's `Char` production.
    fn is_xml_char(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | ' '..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
    }

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        #[test]
        fn any_text_is_an_outbound_message_or_a_reason(text in fuzzing::text(TOKENS, 24)) {
            if let Err(problem) = parse(&text) {
                prop_assert!(!problem.is_empty());
            }
        }

        /// Every notification and field of an envelope reads back as sent.
        #[test]
        fn an_envelope_reads_back_its_notifications(
            organization in "[A-Za-z0-9]{15,18}",
            notifications in prop::collection::vec(notification(), 1..4),
        ) {
            let message = parse(&envelope(&organization, &notifications)).unwrap();
            prop_assert_eq!(&message.organization_id, &organization);
            prop_assert_eq!(message.notifications.len(), notifications.len());
            for (read, (id, fields)) in message.notifications.iter().zip(&notifications) {
                prop_assert_eq!(&read.id, id);
                prop_assert_eq!(read.object_type.as_deref(), Some("Account"));
                let expected: Map<String, Value> = fields
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone().map_or(Value::Null, Value::String)))
                    .collect();
                prop_assert_eq!(&read.fields, &expected);
            }
            prop_assert!(same_organization(&organization, &message.organization_id));
        }

        /// A fault is well-formed XML whose faultstring says the reason,
        /// whatever the reason holds (it may quote what the sender sent).
        #[test]
        fn a_fault_is_xml_that_says_its_reason(reason in ".{0,24}") {
            let text = fault(FaultCode::Client, &reason);
            prop_assert!(text.chars().all(is_xml_char), "{:?}", text);
            let tree = read_tree(&text).unwrap();
            let body = tree.child(SOAP_ENVELOPE, "Body").unwrap();
            let fault = body.child(SOAP_ENVELOPE, "Fault").unwrap();
            let said = &fault.children.iter().find(|child| child.name == "faultstring").unwrap().text;
            // XML readers may take a CR as a line end, as LF.
            let lines = |text: &str| text.replace("\r\n", "\n").replace('\r', "\n");
            let expected: String = reason.chars().map(|c| if is_xml_char(c) { c } else { char::REPLACEMENT_CHARACTER }).collect();
            prop_assert_eq!(lines(said), lines(&expected));
        }
    }
}
