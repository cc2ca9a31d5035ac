//! The sandbox: compiles transform components, checks them against the
//! `passerelle:transform` world, and runs one message through them.
//!
//! Every call gets a fresh instance (no state leaks between messages), a
//! locked-down WASI (no files, environment, network or inherited stdio), a
//! time limit (epoch interruption) and a memory limit. Whatever the guest
//! does, the outcome is a [`TransformFailure`] for that message, never a
//! failure of the host.

mod bounds;
mod cache;
mod guest;
mod lane;
mod ticker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::version::Version;
use guest::{GuestState, bindings};
use ticker::{EPOCH_TICK, Ticker};

pub use bounds::bounded_reason;
pub use cache::{ComponentCache, write_atomically};
pub use guest::GuestLimits;
pub use lane::{LONG_RUNNING, Lanes, RUNNING_AT_ONCE, Ran};

/// Set (to anything) to have compiled guest code listed in
/// `/tmp/perf-<pid>.map`, so that `perf report` names the guests' functions.
pub const GUEST_PERFMAP_ENV: &str = "PASSERELLE_GUEST_PERFMAP";
/// Wall time a call may take beyond its limit before it counts as stuck.
const PARKED_GRACE: Duration = Duration::from_secs(1);

/// Compiles and runs transforms. One per process; cheap to share.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    cache: Option<Arc<ComponentCache>>,
    /// With the pooling allocator, one permit per pool slot: a message
    /// waits for a slot instead of failing when the pool is full.
    slots: Option<Arc<Semaphore>>,
    ticker: Ticker,
}

/// What the pooling allocator reserves up front: instances alive at once,
/// and how large one linear memory may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    pub instances: u32,
    pub max_memory: usize,
}

/// Bounds per component: generous for the toolchains we know (a Rust
/// wasip2 component has about 3 core instances, 1 memory, 2 tables; a
/// componentize-js one 3 core instances and a table of about 7,700
/// elements; a componentize-py one 14 core instances), and what the pool
/// multiplies by its instances.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 8;
/// What stays mapped in a freed slot, so the next instance in it does not
/// fault its pages in again: the kernel work that dominated a fresh
/// instance's cost (see ARCHITECTURE.md).
const MEMORY_KEEP_RESIDENT: usize = 2 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// A compiled component that fits the world, ready to instantiate.
#[derive(Clone)]
pub struct Transform {
    pub version: Version,
    /// Whether the machine code came from the on-disk cache.
    pub from_cache: bool,
    pre: bindings::TransformPre<GuestState>,
    imports_wasi: bool,
}

impl Transform {
    /// Whether the component imports WASI (anything beyond the world's
    /// interfaces). Only then can its guest wait in a host call (a sleep,
    /// a poll), where the epoch deadline does not reach it, so only then is
    /// its call also bounded in wall time.
    pub fn imports_wasi(&self) -> bool {
        self.imports_wasi
    }
}

/// Per-route values a transform runs with.
#[derive(Debug, Clone, Default)]
pub struct RouteContext {
    /// Route name, for logs (shared: every guest's state holds it).
    pub route: Arc<str>,
    /// The route's `config` values, read by the guest through `host.config`.
    pub config: Arc<std::collections::BTreeMap<String, String>>,
    pub limits: GuestLimits,
}

/// One message as the transform sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    #[serde(with = "text_bytes")]
    pub body: Vec<u8>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub message_id: Option<String>,
    /// 1 on first delivery.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

/// What a transform asks the host to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    Call {
        endpoint: String,
        operation: String,
        /// One field per declared parameter.
        args: serde_json::Map<String, serde_json::Value>,
    },
    Publish {
        exchange: String,
        routing_key: String,
        #[serde(with = "text_bytes")]
        body: Vec<u8>,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
}

/// Why a transform produced no actions for a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "failure", content = "reason", rename_all = "lowercase")]
pub enum TransformFailure {
    /// The guest says the message can never succeed as it is.
    #[error("rejected by the transform: {0}")]
    Reject(String),
    /// The guest says the message may succeed later.
    #[error("the transform asks for a retry: {0}")]
    Retry(String),
    /// The guest crashed, ran out of time or memory, or broke the contract.
    #[error("the transform failed: {0}")]
    Trap(String),
}

impl TransformFailure {
    /// Only an explicit `retry` is worth trying again: a trap or a reject
    /// would fail the same way next time.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Retry(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Reject(r) | Self::Retry(r) | Self::Trap(r) => r,
        }
    }
}

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    NotAComponent(String),
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error("the component does not fit the passerelle:transform@0.1.0 world: {0}")]
    WrongWorld(String),
}

impl Runtime {
    /// Instances allocated on demand: for commands that run a few messages.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_config(Config::new(), None)
    }

    /// Instances from a pool reserved up front and reused (each instance
    /// still starts from a clean slot): for `run`, where every message
    /// gets a fresh instance. At most `size.instances` run at once.
    pub fn pooled(size: PoolSize) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(size.instances)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .total_core_instances(size.instances * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(size.instances * MEMORIES_PER_COMPONENT)
            .total_tables(size.instances * TABLES_PER_COMPONENT)
            .total_stacks(size.instances)
            .max_memory_size(size.max_memory)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT.min(size.max_memory))
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let slots = Arc::new(Semaphore::new(size.instances as usize));
        Self::with_config(config, Some(slots))
    }

    /// Builds the engine and starts the epoch ticker that enforces time limits.
    fn with_config(mut config: Config, slots: Option<Arc<Semaphore>>) -> anyhow::Result<Self> {
        config.epoch_interruption(true);
        let perfmap = std::env::var_os(GUEST_PERFMAP_ENV).is_some();
        if perfmap {
            // perf (and the benchmarks' profiles) can name the guests' frames.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| {
            let with = if perfmap {
                format!(" with {GUEST_PERFMAP_ENV} set (it writes /tmp/perf-<pid>.map)")
            } else {
                String::new()
            };
            anyhow!("creating the WebAssembly engine{with}: {e:#}")
        })?;
        let ticker = Ticker::spawn(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow!("linking WASI: {e:#}"))?;
        bindings::Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| anyhow!("linking the host interface: {e:#}"))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache: None,
            slots,
            ticker,
        })
    }

    /// Keeps compiled components in `dir`, so that a restart does not
    /// recompile them.
    pub fn with_cache(mut self, dir: &std::path::Path) -> anyhow::Result<Self> {
        self.cache = Some(Arc::new(ComponentCache::open(dir, &self.engine)?));
        Ok(self)
    }

    /// Compiles a component (or takes it from the cache) and checks it
    /// against the world. CPU-heavy: keep it off the message path.
    pub fn load(&self, bytes: &[u8]) -> Result<Transform, LoadError> {
        ensure_component(bytes)?;
        let cached = self.cache.as_ref().and_then(|cache| cache.get(&self.engine, bytes));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?,
        };
        let transform = self.prepare(component.clone(), Version::of(bytes), from_cache)?;
        if let (Some(cache), false) = (&self.cache, from_cache) {
            cache.put(bytes, &component);
        }
        Ok(transform)
    }

    /// Checks a compiled component against the world.
    fn prepare(&self, component: Component, version: Version, from_cache: bool) -> Result<Transform, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = bindings::TransformPre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let imports_wasi = imports_beyond_the_world(&self.engine, &component);
        Ok(Transform {
            version,
            from_cache,
            pre,
            imports_wasi,
        })
    }

    /// Runs one message through a fresh instance of `transform`.
    pub async fn run(
        &self,
        transform: &Transform,
        route: &RouteContext,
        message: &Message,
    ) -> Result<Vec<Action>, TransformFailure> {
        self.run_guest_message(transform, route, &message.to_guest()).await
    }

    /// `run`, with the message already in the guest's types: the lanes
    /// convert it in the message's task, so it is copied once, not cloned
    /// for the lane and then again for the guest.
    async fn run_guest_message(
        &self,
        transform: &Transform,
        route: &RouteContext,
        message: &GuestMessage,
    ) -> Result<Vec<Action>, TransformFailure> {
        let limits = route.limits;
        // Declared before the store, so dropped after it: the slot is free
        // again only once the instance is gone.
        let _slot = match &self.slots {
            Some(slots) => Some(
                slots
                    .acquire()
                    .await
                    .map_err(|_| TransformFailure::Trap("the runtime is closed".into()))?,
            ),
            None => None,
        };
        // Before the store: the epoch ticks from before the guest runs until
        // after its instance is gone.
        let _ticking = self.ticker.guest_running();
        let state = GuestState::new(route, &transform.version);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        arm_time_limit(&mut store, limits.time);

        let call = async {
            let instance = transform.pre.instantiate_async(&mut store).await?;
            instance.call_transform(&mut store, message).await
        };
        // The epoch deadline stops guest code; this outer bound, in wall
        // time and so generous, also stops a guest parked in a host call
        // (a WASI sleep, say).
        let outcome = if transform.imports_wasi {
            tokio::time::timeout(limits.time * 4 + PARKED_GRACE, call).await
        } else {
            // The world's host functions return at once: the epoch deadline
            // bounds the whole call, and a timer per message would be waste.
            Ok(call.await)
        };
        match outcome {
            Err(_elapsed) => Err(time_limit_failure(limits.time)),
            Ok(Ok(Ok(actions))) => {
                bounds::check_actions(&actions, &limits)?;
                actions.into_iter().map(Action::from_guest).collect()
            }
            Ok(Ok(Err(failure))) => Err(TransformFailure::from_guest(failure)),
            Ok(Err(trap)) => Err(describe_trap(&trap, store.data(), limits)),
        }
    }
}

/// Whether `component` imports anything but the `passerelle:transform`
/// world's interfaces: WASI, in practice.
fn imports_beyond_the_world(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| !name.starts_with("passerelle:transform/"))
}

/// Refuses bytes that are not a component before the compiler gives a
/// less helpful message.
fn ensure_component(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const MODULE_LAYER: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent(
            "not a WebAssembly file (no \\0asm header)".into(),
        ));
    }
    match <[u8; 4]>::try_from(&bytes[4..8]).unwrap_or_default() {
        COMPONENT_LAYER => Ok(()),
        MODULE_LAYER => Err(LoadError::NotAComponent(
            "a core WebAssembly module, not a component: build for wasm32-wasip2, or link with wasm-component-ld"
                .into(),
        )),
        _ => Err(LoadError::NotAComponent("unknown WebAssembly version or layer".into())),
    }
}

/// A deadline callback every tick: guest code yields to the async runtime
/// (so a busy guest never starves other messages) and is stopped once it
/// has run for the limit. Only ticks that find the guest running count, so
/// the limit is close to the guest's CPU time: waiting for a core on a
/// loaded machine does not fail a message.
fn arm_time_limit(store: &mut Store<GuestState>, limit: Duration) {
    let allowed_ticks = (limit.as_micros() / EPOCH_TICK.as_micros()).max(1);
    let mut ticks_run = 0;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks_run += 1;
        if ticks_run >= allowed_ticks {
            Err(Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
}

fn time_limit_failure(limit: Duration) -> TransformFailure {
    TransformFailure::Trap(format!(
        "exceeded its time limit of {}",
        humantime::format_duration(limit)
    ))
}

fn describe_trap(error: &wasmtime::Error, state: &GuestState, limits: GuestLimits) -> TransformFailure {
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return time_limit_failure(limits.time);
    }
    if state.memory.exceeded {
        return TransformFailure::Trap(format!(
            "exceeded its memory limit of {}",
            bytesize::ByteSize(limits.memory as u64).display().iec()
        ));
    }
    tracing::debug!("guest trap: {error:?}");
    // The wasm backtrace in the error's chain means little to a reader of
    // a dead letter; the trap itself and what the guest said before it do.
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.to_string(),
    };
    match state.last_words() {
        Some(words) => TransformFailure::Trap(format!("crashed ({trap}): {words}")),
        None => TransformFailure::Trap(format!("crashed: {trap}")),
    }
}

/// A message as the guest's bindings take it.
type GuestMessage = bindings::passerelle::transform::types::Message;

impl Message {
    fn to_guest(&self) -> GuestMessage {
        GuestMessage {
            body: self.body.clone(),
            content_type: self.content_type.clone(),
            routing_key: self.routing_key.clone(),
            headers: guest::headers_to_guest(&self.headers),
            message_id: self.message_id.clone(),
            attempt: self.attempt,
        }
    }
}

impl Action {
    fn from_guest(action: bindings::passerelle::transform::types::Action) -> Result<Self, TransformFailure> {
        use bindings::passerelle::transform::types::Action as Guest;
        Ok(match action {
            Guest::Call(call) => Action::Call {
                args: parse_args(&call.endpoint, &call.operation, &call.args)?,
                endpoint: call.endpoint,
                operation: call.operation,
            },
            Guest::Publish(publish) => Action::Publish {
                exchange: publish.exchange,
                routing_key: publish.routing_key,
                body: publish.body,
                headers: guest::headers_from_guest(publish.headers),
            },
        })
    }
}

/// The contract says `args` is a JSON object; anything else is the
/// transform's bug, so the message cannot succeed as it is.
fn parse_args(
    endpoint: &str,
    operation: &str,
    args: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, TransformFailure> {
    match serde_json::from_str(args) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(TransformFailure::Reject(format!(
            "call to {endpoint}.{operation}: args must be a JSON object, got {}",
            bounds::cut(args, 200)
        ))),
        Err(e) => Err(TransformFailure::Reject(format!(
            "call to {endpoint}.{operation}: args are not JSON ({e})"
        ))),
    }
}

impl TransformFailure {
    fn from_guest(failure: bindings::passerelle::transform::types::Failure) -> Self {
        use bindings::passerelle::transform::types::Failure as Guest;
        match failure {
            Guest::Reject(reason) => Self::Reject(reason),
            Guest::Retry(reason) => Self::Retry(reason),
        }
    }
}

/// Message and publish bodies are shown as text in JSON (fixtures, CLI
/// output): they are JSON documents in practice.
mod text_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(bytes))
    }

    /// A string is taken as it is; any other JSON value (a fixture's body
    /// written as an object, say) is taken as its JSON text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(text.into_bytes()),
            other => serde_json::to_vec(&other).map_err(serde::de::Error::custom),
        }
    }
}

/// The transform a route currently runs. Swapping it is atomic: a message
/// takes the current version once, at the start of each attempt, and
/// finishes on it.
pub struct TransformSlot(std::sync::RwLock<Arc<Transform>>);

impl TransformSlot {
    pub fn new(transform: Transform) -> Self {
        Self(std::sync::RwLock::new(Arc::new(transform)))
    }

    pub fn current(&self) -> Arc<Transform> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs `transform` and returns the one it replaced.
    pub fn swap(&self, transform: Transform) -> Arc<Transform> {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *slot, Arc::new(transform))
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;
    use bindings::passerelle::transform::types as wit;

    const TOKENS: &[&str] = &[
        "{", "}", "[", "]", "\"", ":", ",", "null", "1e999", "-0", "\\u0000", "\\", " ", "type", "call",
    ];

    /// A call's `args` as a guest may write them: JSON of any shape, or not JSON.
    fn args() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => fuzzing::json(TOKENS).prop_map(|value| value.to_string()),
            1 => fuzzing::text(TOKENS, 12),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![4 => fuzzing::text(TOKENS, 4), 1 => "[a-z.]{250,260}"]
    }

    fn guest_action() -> impl Strategy<Value = wit::Action> {
        let call =
            (fuzzing::text(TOKENS, 3), fuzzing::text(TOKENS, 3), args()).prop_map(|(endpoint, operation, args)| {
                wit::Action::Call(wit::Call {
                    endpoint,
                    operation,
                    args,
                })
            });
        let header = (name(), ".{0,8}").prop_map(|(name, value)| wit::Header { name, value });
        let publish = (
            name(),
            name(),
            prop::collection::vec(any::<u8>(), 0..16),
            prop::collection::vec(header, 0..3),
        )
            .prop_map(|(exchange, routing_key, body, headers)| {
                wit::Action::Publish(wit::Publish {
                    exchange,
                    routing_key,
                    body,
                    headers,
                })
            });
        prop_oneof![call, publish]
    }

    /// A list of objects shaped like actions, each field of any JSON.
    fn actions_json() -> impl Strategy<Value = serde_json::Value> {
        const FIELDS: &[&str] = &[
            "endpoint",
            "operation",
            "args",
            "exchange",
            "routing_key",
            "body",
            "headers",
            "x",
        ];
        let field = prop_oneof![
            1 => fuzzing::json(TOKENS),
            1 => fuzzing::text(TOKENS, 4).prop_map(serde_json::Value::from),
            1 => prop::collection::vec(("[a-z]{0,3}", "[a-z]{0,3}").prop_map(|(n, v)| serde_json::json!([n, v])), 0..3)
                .prop_map(serde_json::Value::from),
        ];
        let action = (
            prop::sample::select(&["call", "publish", "other"][..]),
            prop::collection::btree_map(prop::sample::select(FIELDS), field, 0..6),
        )
            .prop_map(|(kind, fields)| {
                let mut object: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect();
                object.insert("type".into(), kind.into());
                serde_json::Value::Object(object)
            });
        prop::collection::vec(action, 0..4).prop_map(serde_json::Value::from)
    }

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        /// A guest's action becomes the host's with nothing lost, or fails
        /// the message (dead-lettered) saying which part is bad: a publish
        /// AMQP cannot carry at the bounds' check, args that are no JSON
        /// object when parsed.
        #[test]
        fn a_guest_action_is_taken_whole_or_refused_with_its_reason(action in guest_action()) {
            if let Err(failure) = bounds::check_actions(std::slice::from_ref(&action), &GuestLimits::default()) {
                let wit::Action::Publish(publish) = &action else {
                    return Err(TestCaseError::fail(format!("a call failed the bounds: {failure:?}")));
                };
                let too_long = publish.exchange.len() > 255 || publish.routing_key.len() > 255
                    || publish.headers.iter().any(|h| h.name.len() > 255);
                let TransformFailure::Trap(reason) = failure else { unreachable!() };
                prop_assert!(too_long && reason.contains("more than AMQP's 255"), "{}", reason);
                return Ok(());
            }
            let taken = Action::from_guest(action.clone());
            match (action, taken) {
                (wit::Action::Call(call), Ok(Action::Call { endpoint, operation, args })) => {
                    prop_assert_eq!(endpoint, call.endpoint);
                    prop_assert_eq!(operation, call.operation);
                    let parsed: serde_json::Value = serde_json::from_str(&call.args).unwrap();
                    prop_assert_eq!(serde_json::Value::Object(args), parsed);
                }
                (wit::Action::Call(call), Err(TransformFailure::Reject(reason))) => {
                    let prefix = format!("call to {}.{}: args ", call.endpoint, call.operation);
                    prop_assert!(reason.starts_with(&prefix), "{}", reason);
                    let object = serde_json::from_str::<serde_json::Value>(&call.args).is_ok_and(|v| v.is_object());
                    prop_assert!(!object, "a JSON object was rejected: {}", reason);
                }
                (wit::Action::Publish(publish), Ok(Action::Publish { exchange, routing_key, body, headers })) => {
                    prop_assert!(exchange.len() <= 255 && routing_key.len() <= 255);
                    prop_assert!(headers.iter().all(|(name, _)| name.len() <= 255));
                    prop_assert_eq!(exchange, publish.exchange);
                    prop_assert_eq!(routing_key, publish.routing_key);
                    prop_assert_eq!(body, publish.body);
                    let sent: Vec<(String, String)> = publish.headers.into_iter().map(|h| (h.name, h.value)).collect();
                    prop_assert_eq!(headers, sent);
                }
                (_, other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        /// Expected actions in fixtures are JSON: any JSON gives actions that
        /// write back and read the same, or a serde error, never a panic.
        #[test]
        fn actions_read_from_json_write_back_the_same(value in actions_json()) {
            if let Ok(actions) = serde_json::from_value::<Vec<Action>>(value) {
                let written = serde_json::to_value(&actions).unwrap();
                prop_assert_eq!(serde_json::from_value::<Vec<Action>>(written).unwrap(), actions);
            }
        }
    }
}
