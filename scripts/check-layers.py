#!/usr/bin/env python3
"""The module layers of src/, top to bottom; prints every `crate::` import that runs from a
lower layer to a higher one and exits 1 if there is any (`make lint` runs it).

Usage: scripts/check-layers.py [SRC_DIR] [--peers] [--docs]
  --peers  also print arrows between different modules of the same layer
  --docs   also count `crate::` paths inside comments / doc links
Top-level module = first path segment under src/ (src/train/x.rs -> train,
src/config.rs -> config); lib.rs and main.rs are ignored. `super::` is ignored.
"""
import re
import sys
from pathlib import Path

LAYERS = [
    ["cli"],
    ["bench"],
    ["deploy", "experiments"],
    ["train"],
    ["detect", "eval"],
    ["data", "nn"],
    ["config"],
    ["quant", "draw", "torch_ext", "machine", "fsutil", "npy", "progress", "malloc_policy"],
]
# Imports reported but not counted (file relative to the repo, target module); none today.
ALLOW = set()
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments(text):
    """Blank out comments and string literals, keeping offsets/newlines intact."""
    out = list(text)
    i, n = 0, len(text)
    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j); i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j): depth += 1; j += 2
                elif text.startswith("*/", j): depth -= 1; j += 2
                else: j += 1
            blank(i, j); i = j
        elif c == '"' :
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i + 1, j); i = j + 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j
            blank(i + len(m.group(0)), j); i = j + len(end)
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            i += len(re.match(r"'(\\.|[^\\'])'", text[i:]).group(0))
        else:
            i += 1
    return "".join(out)


def group_heads(text, start):
    """text[start] == '{': return first segments of each top-level item of the group."""
    depth, j, item, items, item_start = 0, start, "", [], start + 1
    while j < len(text):
        c = text[j]
        if c == "{":
            depth += 1
            if depth == 1: j += 1; continue
        elif c == "}":
            depth -= 1
            if depth == 0:
                items.append((item, item_start)); break
        elif c == "," and depth == 1:
            items.append((item, item_start)); item = ""; j += 1; item_start = j; continue
        item += c; j += 1
    heads = []
    for it, at in items:
        m = IDENT.match(it.strip())
        if m: heads.append((m.group(0), at + len(it) - len(it.lstrip())))
    return heads


def module_of(path, src):
    rel = path.relative_to(src)
    if rel.parts[0] in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]


def arrows(src, docs=False):
    for path in sorted(src.rglob("*.rs")):
        mod = module_of(path, src)
        if mod is None:
            continue
        raw = path.read_text()
        text = raw if docs else strip_comments(raw)
        for m in re.finditer(r"(?<![A-Za-z0-9_$])crate::", text):
            pos = m.end()
            if pos < len(text) and text[pos] == "{":
                targets = group_heads(text, pos)
            else:
                t = IDENT.match(text, pos)
                targets = [(t.group(0), pos)] if t else []
            for tgt, at in targets:
                line = text.count("\n", 0, at) + 1
                if tgt in RANK and tgt != mod:
                    yield path.relative_to(src.parent), line, mod, tgt, raw.splitlines()[line - 1].strip()


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = Path(args[0] if args else Path(__file__).resolve().parent.parent / "src").resolve()
    docs, peers = "--docs" in sys.argv, "--peers" in sys.argv
    unknown = set()
    up, same, allowed = [], [], []
    for f, line, mod, tgt, code in arrows(src, docs):
        if mod not in RANK:
            unknown.add(mod); continue
        if RANK[mod] > RANK[tgt] and (str(f), tgt) in ALLOW:
            allowed.append((f, line, mod, tgt, code))
        elif RANK[mod] > RANK[tgt]:
            up.append((f, line, mod, tgt, code))
        elif RANK[mod] == RANK[tgt]:
            same.append((f, line, mod, tgt, code))
    print(f"# upward arrows (lower layer imports higher): {len(up)}")
    for f, line, mod, tgt, code in up:
        print(f"{f}:{line}: {mod}(L{RANK[mod]}) -> {tgt}(L{RANK[tgt]})   {code[:90]}")
    if allowed:
        print(f"# allowed compatibility re-exports: {len(allowed)}")
        for f, line, mod, tgt, code in allowed:
            print(f"{f}:{line}: {mod} -> {tgt}   {code[:90]}")
    if peers:
        print(f"# same-layer arrows between different modules: {len(same)}")
        for f, line, mod, tgt, code in same:
            print(f"{f}:{line}: {mod} -> {tgt}   {code[:90]}")
    if unknown:
        print("# modules not in any layer:", ", ".join(sorted(unknown)))
    return 1 if up or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
