//! Docker's answers about containers and the events that name them, as
//! the follower reads them: `docker::model::parse_inspect` on a
//! `GET /containers/{id}/json` body, `parse_list` on a `/containers/json`
//! one, and `docker::model::event_target` on an event line — a hostile or
//! broken dockerd's bytes.
//!
//! Never panics; a container either parser returns has a trimmed tunnel
//! (and class, when it has one), a name without Docker's `/` (or the id's
//! start), and each address once,
//! none unspecified; an id an event hands on for a request path is one
//! `valid_id` accepts; and the inspect answer, set into `model::Known`
//! under the asked id, leaves one entry for it and the entries sorted by id.
//!
//! Input: a control byte (its low bit: the asked id is the answer's own, or
//! another), then the body.
#![no_main]
use egressd::docker::model::{self, Known, Target};
use libfuzzer_sys::fuzz_target;

const LABEL: &str = "egressd.tunnel";
const CLASS_LABEL: &str = "egressd.class";

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else { return };
    match model::event_target(body) {
        Target::Inspect(id) | Target::Gone(id) => assert!(model::valid_id(&id), "{id:?}"),
        Target::None | Target::All => {}
    }
    for c in model::parse_list(body, LABEL, CLASS_LABEL).unwrap_or_default() {
        well_formed(&c);
    }
    let Ok(found) = model::parse_inspect(body, LABEL, CLASS_LABEL) else { return };
    let mut known = Known::default();
    known.set("0123456789ab", Some(sample("0123456789ab")));
    known.set("ffff", Some(sample("ffff")));
    let Some(c) = found else {
        assert!(known.set("ffff", None));
        assert_eq!(known.containers().len(), 1);
        return;
    };
    well_formed(&c);
    let asked = if ctl & 1 == 0 { c.id.clone() } else { "0123456789ab".to_string() };
    known.set(&asked, Some(c.clone()));
    let list = known.containers();
    assert_eq!(list.iter().filter(|k| k.id == c.id).count(), 1);
    assert!(list.windows(2).all(|w| w[0].id < w[1].id), "not sorted by id");
    assert!(!list.iter().any(|k| k.id == asked && k.id != c.id), "the asked id's old entry stayed");
});

fn well_formed(c: &model::Container) {
    assert_eq!(c.tunnel, c.tunnel.trim());
    if let Some(class) = &c.class {
        assert_eq!(class, class.trim());
    }
    // Its Name without the `/`, or without one, the id's first 12 characters.
    assert!(!c.name.starts_with('/') || c.id.starts_with(&c.name), "{:?} of {:?}", c.name, c.id);
    for (i, a) in c.addrs.iter().enumerate() {
        assert!(!a.is_unspecified());
        assert!(!c.addrs[..i].contains(a), "{a} twice");
    }
}

fn sample(id: &str) -> model::Container {
    model::Container { id: id.into(), name: id.into(), tunnel: "hk0".into(), class: None, addrs: Vec::new() }
}
