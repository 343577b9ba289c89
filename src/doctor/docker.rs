//! Docker labels (`docker:` in the config): can egressd read the Engine
//! API, and does every labelled container name a tunnel (and a class, if
//! it names one) and sit on an intercepted interface?

use std::net::IpAddr;

use super::Check;
use crate::config::{DockerSettings, Settings};
use crate::docker::model::Container;
use crate::route::Cidr;

/// The Docker checks: the socket, then one line per labelled container
/// that needs attention (or one line saying they are all fine).
pub(super) fn checks(settings: &Settings, subnets: &[Cidr]) -> Vec<Check> {
    let Some(d) = &settings.docker else { return Vec::new() };
    match crate::docker::client::list(d) {
        Err(e) => vec![socket_failure(d, &e)],
        Ok(list) => judge(settings, d, &list, subnets),
    }
}

fn socket_failure(d: &DockerSettings, e: &str) -> Check {
    let path = d.socket.display();
    let fix = if e.contains("ermission denied") {
        format!(
            "egressd needs read access to {path}: run it in the docker group (root-equivalent), or point \
             docker.socket at a filtering proxy that allows only GET /containers and /events"
        )
    } else {
        format!("start dockerd, or set docker.socket to its socket (now {path}); label routes wait for it")
    };
    Check::fail("docker socket", format!("cannot list containers: {e}"), fix)
}

/// Pure: what the list says, given the tunnels and the intercepted subnets.
pub(super) fn judge(
    settings: &Settings,
    d: &DockerSettings,
    list: &[Container],
    subnets: &[Cidr],
) -> Vec<Check> {
    let mut out = vec![Check::ok(
        "docker socket",
        format!("{}: {} running container(s) labelled {}", d.socket.display(), list.len(), d.label),
    )];
    for c in list {
        let name = format!("container {}", c.name);
        if settings.tunnel_id(&c.tunnel).is_none() {
            let known: Vec<&str> = settings.tunnels.iter().map(|t| t.name.as_str()).collect();
            out.push(Check::fail(
                name,
                format!("label {}={:?} names no tunnel: the container is rejected", d.label, c.tunnel),
                format!("relabel it with one of: {} (re-create the container)", known.join(", ")),
            ));
            continue;
        }
        if let Some(class) = c.class.as_deref().filter(|k| settings.class_id(k).is_none()) {
            let known: Vec<&str> = settings.classes.iter().map(|k| k.name.as_str()).collect();
            let fix = if known.is_empty() {
                format!("define class {class:?} in classes, or re-create the container without the label")
            } else {
                format!(
                    "relabel it with one of: {} (re-create the container), or define {class:?} in classes",
                    known.join(", ")
                )
            };
            out.push(Check::fail(
                name,
                format!("label {}={class:?} names no class: the container is rejected", d.class_label),
                fix,
            ));
            continue;
        }
        let outside: Vec<IpAddr> =
            c.addrs.iter().copied().filter(|a| !subnets.iter().any(|s| s.contains(*a))).collect();
        if c.addrs.is_empty() {
            out.push(Check::warn(name, "has no address on any network (network: host or none?)", None));
        } else if !outside.is_empty() {
            let list: Vec<String> = outside.iter().map(IpAddr::to_string).collect();
            out.push(Check::warn(
                name,
                format!(
                    "label {}={} but {} is on no intercepted interface: that traffic never reaches egressd",
                    d.label,
                    c.tunnel,
                    list.join(", ")
                ),
                Some("add its network's bridge to intercept.interfaces (e.g. \"br-+\") and re-run `egressd rules`".into()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn unknown_tunnels_fail_and_outside_addresses_warn() {
        let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "hk0": Direct() }, routes: [], docker: ())"#;
        let s = Settings::parse("t.ron", text).unwrap();
        let d = s.docker.clone().unwrap();
        let c = |name: &str, tunnel: &str, addrs: &[&str]| Container {
            id: format!("{name}-id"),
            name: name.into(),
            tunnel: tunnel.into(),
            class: None,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let list = [
            c("ok", "hk0", &["10.8.0.2"]),
            c("typo", "hk9", &["10.8.0.3"]),
            c("far", "hk0", &["172.30.0.2"]),
            Container { class: Some("slow".into()), ..c("unclassed", "hk0", &["10.8.0.5"]) },
        ];
        let got = judge(&s, &d, &list, &["10.8.0.0/24".parse().unwrap()]);
        let status: Vec<(Status, &str)> = got.iter().map(|c| (c.status, c.name.as_str())).collect();
        assert_eq!(
            status,
            [
                (Status::Ok, "docker socket"),
                (Status::Fail, "container typo"),
                (Status::Warn, "container far"),
                (Status::Fail, "container unclassed"),
            ]
        );
        assert!(got[1].saw.contains("\"hk9\"") && got[1].fix.as_deref().unwrap().contains("hk0"), "{got:?}");
        assert!(got[3].saw.contains("egressd.class=\"slow\" names no class"), "{got:?}");
        assert!(got[3].fix.as_deref().unwrap().contains("define class \"slow\""), "{got:?}");
        // With the class defined, the same container is fine.
        let s = Settings::parse(
            "t.ron",
            &text.replace("routes: []", r#"routes: [], classes: { "slow": (rate: "1mbit") }"#),
        )
        .unwrap();
        assert_eq!(judge(&s, &d, &list[3..], &["10.8.0.0/24".parse().unwrap()]).len(), 1);
    }

    #[test]
    fn an_unreadable_socket_says_how_to_grant_access() {
        let d = DockerSettings {
            socket: "/run/docker.sock".into(),
            label: "egressd.tunnel".into(),
            class_label: "egressd.class".into(),
        };
        let c = socket_failure(&d, "cannot connect to /run/docker.sock: Permission denied (os error 13)");
        assert_eq!(c.status, crate::doctor::Status::Fail);
        assert!(c.fix.unwrap().contains("docker group"));
    }
}
