#!/usr/bin/env python3
"""Writes THIRD-PARTY-LICENSES for one target: every crate linked into libappsignal for it.

usage: licenses.py TARGET > THIRD-PARTY-LICENSES

The crates are those `cargo tree -p appsignal-ffi -e normal,no-proc-macro --target TARGET` lists:
what a build of appsignal-ffi alone links for that target (not build scripts, proc macros or dev
dependencies); our own path crates are covered by LICENSE. `cargo metadata` says where each is.
Each crate's license files (LICENSE*, LICENCE*, COPYING*, NOTICE*, COPYRIGHT*, or its
`license-file`) are copied from its source in cargo's registry; identical texts are written once,
headed by the crates that carry them. Fails when a linked crate has neither a license expression
nor a license file.
"""
import hashlib
import json
import os
import re
import subprocess
import sys

LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|COPYRIGHT)([-._].*)?$", re.IGNORECASE)


def main():
    target = sys.argv[1]
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target],
        check=True, capture_output=True, text=True).stdout)
    tree = subprocess.run(
        ["cargo", "tree", "-p", "appsignal-ffi", "-e", "normal,no-proc-macro", "--target", target,
         "--prefix", "none", "-f", "{p}", "--locked"],
        check=True, capture_output=True, text=True).stdout
    wanted = {tuple(line.split()[:2]) for line in tree.splitlines() if line.strip()}
    linked = [p for p in meta["packages"] if (p["name"], "v" + p["version"]) in wanted]
    texts = {}  # sha256 -> (text, [crate names])
    rows = []
    for pkg in sorted(linked, key=lambda p: (p["name"], p["version"])):
        if pkg["source"] is None:  # a path crate of this repository: LICENSE covers it
            continue
        crate = f'{pkg["name"]} {pkg["version"]}'
        folder = os.path.dirname(pkg["manifest_path"])
        files = sorted(f for f in os.listdir(folder) if LICENSE_FILE.match(f) and os.path.isfile(os.path.join(folder, f)))
        if not files and pkg.get("license_file"):
            files = [pkg["license_file"]]
        if not files and not pkg.get("license"):
            sys.exit(f"{crate}: no license expression and no license file")
        rows.append(f'{crate:<48} {pkg.get("license") or "see its license file"}')
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
            digest = hashlib.sha256(text.encode()).hexdigest()
            texts.setdefault(digest, (text, []))[1].append(f"{crate} ({name})")

    out = sys.stdout
    out.write(f"Third-party software in libappsignal for {target}\n")
    out.write("=" * 72 + "\n\n")
    out.write("The library links the Rust standard library (core, alloc, std and their dependencies),\n"
              "licensed MIT OR Apache-2.0 (https://github.com/rust-lang/rust), and these crates:\n\n")
    out.write("\n".join(rows) + "\n")
    for text, crates in sorted(texts.values(), key=lambda t: t[1][0]):
        out.write("\n" + "=" * 72 + "\n")
        out.write("".join(f"{c}\n" for c in crates))
        out.write("-" * 72 + "\n" + text + "\n")


if __name__ == "__main__":
    main()
