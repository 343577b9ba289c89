//! Unit tests for [`Lru`]: order, touch, remove, slot reuse, pop order,
//! and a seeded random run against a `Vec` model.

use super::*;

fn keys(l: &Lru<u32, &'static str>) -> Vec<u32> {
    l.iter().map(|(k, _)| *k).collect()
}

fn lru() -> Lru<u32, &'static str> {
    Lru::with_capacity_and_hasher(0, FoldState::with_seeds(1, 2))
}

#[test]
fn insertion_order_is_use_order() {
    let mut l = lru();
    assert!(l.is_empty());
    assert_eq!(l.peek_oldest(), None);
    assert_eq!(l.insert(1, "a"), None);
    assert_eq!(l.insert(2, "b"), None);
    assert_eq!(l.insert(3, "c"), None);
    assert_eq!(keys(&l), [1, 2, 3]);
    assert_eq!(l.len(), 3);
    assert_eq!(l.iter().len(), 3);
    assert_eq!(l.peek_oldest(), Some((&1, &"a")));
}

#[test]
fn touch_moves_to_newest_get_does_not() {
    let mut l = lru();
    for (k, v) in [(1, "a"), (2, "b"), (3, "c")] {
        let _ = l.insert(k, v);
    }
    assert_eq!(l.get(&1), Some(&"a"));
    assert_eq!(l.get_mut(&1).map(|v| *v), Some("a"));
    assert_eq!(keys(&l), [1, 2, 3]);
    assert_eq!(l.touch(&1).map(|v| *v), Some("a"));
    assert_eq!(keys(&l), [2, 3, 1]);
    // Touching the newest is a no-op.
    let _ = l.touch(&1);
    assert_eq!(keys(&l), [2, 3, 1]);
    // The middle one.
    let _ = l.touch(&3);
    assert_eq!(keys(&l), [2, 1, 3]);
    assert_eq!(l.touch(&9), None);
}

#[test]
fn insert_existing_replaces_and_moves_to_newest() {
    let mut l = lru();
    let _ = l.insert(1, "a");
    let _ = l.insert(2, "b");
    assert_eq!(l.insert(1, "A"), Some("a"));
    assert_eq!(keys(&l), [2, 1]);
    assert_eq!(l.get(&1), Some(&"A"));
    assert_eq!(l.len(), 2);
}

#[test]
fn remove_head_middle_tail() {
    let mut l = lru();
    for (k, v) in [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")] {
        let _ = l.insert(k, v);
    }
    assert_eq!(l.remove(&3), Some("c"));
    assert_eq!(keys(&l), [1, 2, 4, 5]);
    assert_eq!(l.remove(&1), Some("a"));
    assert_eq!(keys(&l), [2, 4, 5]);
    assert_eq!(l.remove(&5), Some("e"));
    assert_eq!(keys(&l), [2, 4]);
    assert_eq!(l.remove(&5), None);
    assert!(!l.contains_key(&5));
    assert_eq!(l.remove(&2), Some("b"));
    assert_eq!(l.remove(&4), Some("d"));
    assert!(l.is_empty());
    assert_eq!(l.peek_oldest(), None);
    assert_eq!(l.pop_oldest(), None);
    // Still usable after emptying.
    let _ = l.insert(6, "f");
    assert_eq!(keys(&l), [6]);
}

#[test]
fn freed_slots_are_reused_before_growing() {
    let mut l = lru();
    for k in 0..8 {
        let _ = l.insert(k, "x");
    }
    let slots = l.arena.slots.len();
    let cap = l.arena.slots.capacity();
    for round in 0..100u32 {
        // Keys 0..8 are live; pop one, remove another, put both back.
        let (k, _) = l.pop_oldest().unwrap();
        let other = (k + 1 + round % 7) % 8;
        assert!(l.remove(&other).is_some());
        let _ = l.insert(other, "y");
        let _ = l.insert(k, "z");
    }
    assert_eq!(l.arena.slots.len(), slots);
    assert_eq!(l.arena.slots.capacity(), cap);
    assert_eq!(l.len(), 8);
}

#[test]
fn pop_oldest_in_use_order() {
    let mut l = lru();
    for (k, v) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        let _ = l.insert(k, v);
    }
    let _ = l.touch(&2);
    let _ = l.touch(&1);
    let mut popped = Vec::new();
    while let Some((k, v)) = l.pop_oldest() {
        popped.push((k, v));
    }
    assert_eq!(popped, [(3, "c"), (4, "d"), (2, "b"), (1, "a")]);
    assert!(l.is_empty());
    assert!(!l.contains_key(&1));
}

#[test]
fn clear_keeps_working() {
    let mut l = lru();
    for k in 0..5 {
        let _ = l.insert(k, "x");
    }
    l.clear();
    assert!(l.is_empty());
    assert_eq!(l.get(&1), None);
    let _ = l.insert(9, "y");
    assert_eq!(keys(&l), [9]);
    assert_eq!(format!("{l:?}"), r#"{9: "y"}"#);
}

#[test]
fn socket_addr_keys_with_default_hasher() {
    use std::net::SocketAddr;
    let mut l: Lru<SocketAddr, u8> = Lru::with_capacity(4);
    let a: SocketAddr = "203.0.113.7:443".parse().unwrap();
    let b: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let _ = l.insert(a, 1);
    let _ = l.insert(b, 2);
    assert_eq!(l.get(&a), Some(&1));
    assert_eq!(l.get(&b), Some(&2));
    assert_eq!(l.pop_oldest(), Some((a, 1)));
}

/// Random operations against a `Vec` kept in use order.
#[test]
fn random_ops_match_vec_model() {
    for seed in [1u64, 0xdead_beef, 42, 7_777_777] {
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut l: Lru<u32, u64> = Lru::with_capacity_and_hasher(0, FoldState::with_seeds(seed, !seed));
        let mut model: Vec<(u32, u64)> = Vec::new();
        for step in 0..20_000u64 {
            let k = (next() % 48) as u32;
            match next() % 6 {
                0 | 1 => {
                    let old = model.iter().position(|e| e.0 == k).map(|p| model.remove(p).1);
                    model.push((k, step));
                    assert_eq!(l.insert(k, step), old);
                }
                2 => {
                    let want = model.iter().position(|e| e.0 == k).map(|p| {
                        let e = model.remove(p);
                        model.push(e);
                        e.1
                    });
                    assert_eq!(l.touch(&k).copied(), want);
                }
                3 => {
                    let want = model.iter().position(|e| e.0 == k).map(|p| model.remove(p).1);
                    assert_eq!(l.remove(&k), want);
                }
                4 => {
                    let want = if model.is_empty() { None } else { Some(model.remove(0)) };
                    assert_eq!(l.pop_oldest(), want);
                }
                _ => {
                    let want = model.iter().find(|e| e.0 == k).map(|e| e.1);
                    assert_eq!(l.get(&k).copied(), want);
                }
            }
            assert_eq!(l.len(), model.len());
            assert_eq!(l.peek_oldest().map(|(k, v)| (*k, *v)), model.first().copied());
            if step % 64 == 0 {
                assert_eq!(l.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), model);
            }
            // Never more slots than the most entries ever live at once (48 keys).
            assert!(l.arena.slots.len() <= 48);
        }
    }
}
