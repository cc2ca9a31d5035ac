//! Test fixture, not shipped: a well-formed component of another world
//! (`wit/wrong.wit`: `transform: func(body: string) -> string`), so the host
//! must refuse it at load or reload. It uses wit-bindgen directly, not the SDK.

wit_bindgen::generate!({ path: "wit", world: "wrong" });

struct Echo;

impl Guest for Echo {
    fn transform(body: String) -> String {
        body
    }
}

export!(Echo);
