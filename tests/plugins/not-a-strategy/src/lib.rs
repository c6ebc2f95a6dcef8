//! Test fixture: a valid component that is not a discovery strategy (it exports
//! another world), so `wasmnode check` must refuse it by name.

wit_bindgen::generate!({
    inline: "package test:other; world other { export hello: func() -> string; }",
});

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "not a strategy".into()
    }
}

export!(Other);
