"""Tests of check_layers.py on small made-up crates (run by scripts/check-layers.sh)."""

import os
import tempfile
import unittest

import check_layers as cl


def crate(files: dict[str, str]) -> str:
    """A temporary repository with one crate `c` holding `files` (paths under c/src)."""
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "c", "src"))
    with open(os.path.join(root, "c", "Cargo.toml"), "w") as f:
        f.write('[package]\nname = "c"\n')
    for path, text in files.items():
        full = os.path.join(root, "c", "src", path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    return root


class UseTrees(unittest.TestCase):
    def test_groups_aliases_self_and_globs(self):
        self.assertEqual(
            cl.expand_use_tree("crate::{a::{b as c, *}, self, d::e}"),
            [["crate", "a", "b"], ["crate", "a", "*"], ["crate"], ["crate", "d", "e"]],
        )

    def test_a_name_containing_as_is_not_an_alias(self):
        self.assertEqual(cl.expand_use_tree("crate::tasks::load"), [["crate", "tasks", "load"]])


class Cycles(unittest.TestCase):
    def test_crate_paths_between_top_modules(self):
        root = crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::Thing;\n",
            "b/mod.rs": "mod inner;\n",
            "b/inner.rs": "fn f() { let _ = crate::a::g(); }\n",
        })
        [problem] = cl.check(root)
        self.assertIn("modules of crate import each other in a cycle: a, b", problem)
        self.assertIn("a -> b: c/src/a.rs:1: use crate::b::Thing", problem)
        self.assertIn("b -> a: c/src/b/inner.rs:1: crate::a::g", problem)

    def test_super_paths_between_siblings(self):
        root = crate({
            "lib.rs": "mod r;\n",
            "r/mod.rs": "mod x;\nmod y;\n",
            "r/x.rs": "use super::{y::Y, helper};\n",
            "r/y.rs": "fn f() -> super::x::X { todo!() }\n",
        })
        [problem] = cl.check(root)
        self.assertIn("modules of crate::r import each other in a cycle: x, y", problem)

    def test_a_one_way_import_parents_and_children_are_no_cycle(self):
        root = crate({
            "lib.rs": "mod a;\nmod b;\npub use a::A;\n",
            "a.rs": "use crate::b::B;\nuse super::A;\nmod tests { use super::*; use crate::a::A; }\n",
            "b.rs": "pub struct B;\n",
        })
        self.assertEqual(cl.check(root), [])

    def test_comments_and_strings_name_nothing(self):
        root = crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": '/// see [`crate::a::A`]\n// crate::a::x\nconst S: &str = "crate::a::y";\n'
            "const R: &str = r#\"use crate::a::z;\"#;\nfn f<'a>(c: char) -> bool { c == '\"' }\n",
        })
        self.assertEqual(cl.check(root), [])

    def test_super_out_of_an_inline_test_module(self):
        root = crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": "#[cfg(test)]\nmod tests {\n    use super::super::a::A;\n}\n",
        })
        [problem] = cl.check(root)
        self.assertIn("b -> a: c/src/b.rs:3: use super::super::a::A", problem)

    def test_binaries_of_src_bin_are_other_crates(self):
        root = crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": "",
            "bin/tool.rs": "mod b { use crate::a::A; }\n",
        })
        self.assertEqual(cl.check(root), [])


if __name__ == "__main__":
    unittest.main()
