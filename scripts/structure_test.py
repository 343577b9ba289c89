#!/usr/bin/env python3
"""Tests scripts/structure.py on small fake crates, so that a check that
finds nothing has been shown able to find something.

  python3 scripts/structure_test.py
"""
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import structure  # noqa: E402


class Structure(unittest.TestCase):
    def crate(self, files, lib=None):
        """A crate in a temp dir: {path under src/: text}; lib.rs declares
        the top-level modules of `files` unless `lib` names them."""
        root = Path(self.enterContext(tempfile.TemporaryDirectory()))
        tops = lib or sorted({p.split("/")[0].removesuffix(".rs") for p in files})
        files = {"lib.rs": "".join(f"pub mod {m};\n" for m in tops), **files}
        for path, text in files.items():
            (root / "src" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "src" / path).write_text(textwrap.dedent(text))
        return root

    def check(self, files, **kw):
        problems, _, edges = structure.check(self.crate(files, **kw))
        return problems, {e: len(w) for e, w in edges.items()}

    def test_cycle_with_evidence(self):
        problems, _ = self.check({
            "stats/mod.rs": "pub struct S {\n    pub pools: crate::pool::Pools,\n}\n",
            "pool/mod.rs": "pub fn fill(s: &mut crate::stats::Snapshot) {}\n",
        })
        self.assertIn("cycle: pool -> stats -> pool (pool -> stats at src/pool/mod.rs:1; "
                      "stats -> pool at src/stats/mod.rs:2)", problems)

    def test_longer_cycle_printed_once(self):
        problems, _ = self.check({
            "bucket.rs": "use crate::sys::A;", "sys/mod.rs": "use crate::wire::B;", "wire.rs": "use crate::bucket::C;",
        })
        self.assertEqual([p for p in problems if p.startswith("cycle")],
                         ["cycle: bucket -> sys -> wire -> bucket (bucket -> sys at src/bucket.rs:1; "
                          "sys -> wire at src/sys/mod.rs:1; wire -> bucket at src/wire.rs:1)"])

    def test_upward_edge(self):
        problems, _ = self.check({
            "docker/mod.rs": "pub mod client;\n",
            "docker/client.rs": "use std::io;\nuse crate::front::Live;\nfn f(_: crate::front::Live) {}\n",
            "front/mod.rs": "pub struct Live;\n",
        })
        self.assertEqual(problems, ["upward: docker (layer 5) -> front (layer 6) at src/docker/client.rs:2 (and 1 more)"])

    def test_module_missing_from_layer_table(self):
        problems, _ = self.check({"extra.rs": "", "bucket.rs": "use crate::extra::X;"})
        self.assertEqual(problems, ["layer table: add extra to LAYERS in scripts/structure.py"])

    def test_grouped_inline_and_super_paths_are_edges(self):
        _, edges = self.check({
            "worker/mod.rs": """\
                mod a;
                use crate::{
                    pool::Pools,
                    relay::{self, Relay},
                    stats,
                };
                use super::bucket::Bucket; // the root's child: an edge
                pub(in crate::worker) fn f(x: crate::upstream::Up) -> crate::wire::Frame { todo!() }
                """,
            "worker/a.rs": "use super::slab; // worker's own child\nuse super::super::route::Cidr;\n",
            "pool/mod.rs": "", "relay.rs": "", "stats.rs": "", "bucket.rs": "", "upstream.rs": "",
            "wire.rs": "", "route.rs": "",
        })
        self.assertEqual(set(edges), {("worker", m) for m in ["pool", "relay", "stats", "bucket", "upstream", "wire", "route"]})

    def test_comments_literals_and_test_code_are_not_edges(self):
        _, edges = self.check({
            "stats/mod.rs": """\
                //! Filled by crate::pool.
                /// See [`crate::pool::Pools`].
                // crate::pool
                /* crate::pool /* nested */ crate::pool */
                #[cfg(test)]
                mod fake;
                #[cfg(test)]
                use crate::pool::Fake;
                pub struct S {
                    #[cfg(test)]
                    probe: u8,
                    bucket: crate::bucket::Bucket, // a field after a test-only one: counted
                }
                impl S {
                    #[cfg(test)]
                    fn helper(&self) -> u8 { crate::pool::count() }
                }
                pub fn f<'a>(x: &'a str) -> (&'a str, char, &'static str) {
                    (x, '"', "crate::pool \\" { r#")  // a quote, an escaped quote and a brace in literals
                }
                pub const R: &str = r#"crate::pool "}" "#;

                #[cfg(test)]
                mod tests {
                    use crate::pool::Pools;
                    fn g() { let _ = "}"; }
                }

                #[cfg(test)]
                mod more_tests;
                pub use crate::bucket::Bucket; // after the test module: still counted
                use crate::{bucket::{pool, relay}}; // bucket's own children, not the modules
                """,
            "stats/fake.rs": "use crate::pool::Pools;\n",
            "stats/more_tests.rs": "use crate::pool::Pools;\n",
            "stats/tests.rs": "use crate::pool::Pools;\n",
            "stats/sim_tests.rs": "use crate::pool::Pools;\n",
            "pool/mod.rs": "", "bucket.rs": "", "relay.rs": "",
        })
        self.assertEqual(edges, {("stats", "bucket"): 3})

    def test_long_file(self):
        problems, _ = self.check({"config/mod.rs": "\n" * 801, "config/raw.rs": "\n" * 800})
        self.assertEqual(problems, ["long file: src/config/mod.rs (801 lines)"])

    def test_long_fn_on_the_data_path(self):
        def fn(name, lines):  # a fn of exactly `lines` lines, with braces in literals
            return f"fn {name}(a: [u8; 4]) -> u8 {{\n" + '    let _ = "{{";\n' * (lines - 2) + "}\n"

        problems, _ = self.check({
            "worker/mod.rs": "trait T {\n    fn decl(&self);\n}\n" + fn("long", 71) + fn("ok", 70)
            + "#[cfg(test)]\nmod tests {\n" + fn("test_long", 100) + "}\n",
            "config/mod.rs": fn("off_the_data_path", 100),
        })
        self.assertEqual(problems, ["long fn: src/worker/mod.rs:4 long (71 lines)"])

    def test_clean_crate_passes_and_dirty_fails(self):
        clean = self.crate({"bucket.rs": "", "worker/mod.rs": "use crate::bucket::Bucket;\n"})
        run = subprocess.run([sys.executable, HERE / "structure.py", "--graph", clean], capture_output=True, text=True)
        self.assertEqual((run.returncode, run.stdout),
                         (0, "worker -> bucket (1)\nstructure: 2 modules, 1 edges, 0 violations\n"))
        dirty = self.crate({"bucket.rs": "use crate::worker::W;\n", "worker/mod.rs": ""})
        run = subprocess.run([sys.executable, HERE / "structure.py", dirty], capture_output=True, text=True)
        self.assertEqual(run.returncode, 1)
        self.assertIn("upward: bucket (layer 0) -> worker (layer 4) at src/bucket.rs:1", run.stdout)


if __name__ == "__main__":
    unittest.main()
