#!/usr/bin/env python3
"""Independent DKIM verification of a message signed by postgate, with dkimpy.

Usage: verify.py RECORDS_FILE MESSAGE_FILE

RECORDS_FILE holds the DNS records exactly as `postgate dkim generate` printed
them; every line of the form `NAME. IN TXT "part" "part" ...` is a record,
other lines are ignored. dkimpy looks keys up through this table instead of
DNS (its `dnsfunc` hook). Each DKIM-Signature of the message is verified on
its own. Prints one line per signature (tab-separated: pass|fail, d, s, a, h,
error) and exits 0 only if there is
at least one signature and all verify. Ed25519 needs PyNaCl.
"""
import re
import sys

import dkim

ZONE_LINE = re.compile(r'^(\S+)\s+IN\s+TXT\s+((?:"[^"]*"\s*)+)$')


def load_records(path):
    records = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            m = ZONE_LINE.match(line.strip())
            if not m:
                continue
            name = m.group(1).lower().rstrip(".") + "."
            parts = re.findall(r'"([^"]*)"', m.group(2))
            if any(len(p.encode()) > 255 for p in parts):
                sys.exit(f"TXT string longer than 255 bytes in {name}")
            records[name] = "".join(parts).encode("ascii")
    return records


def main():
    records = load_records(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        message = f.read()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return records.get(name.lower().rstrip(".") + ".")

    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    ok_all = count > 0
    for idx in range(count):
        v = dkim.DKIM(message)
        try:
            ok = bool(v.verify(idx=idx, dnsfunc=dnsfunc))
            err = None
        except Exception as e:  # report, do not crash: the test reads the lines
            ok, err = False, f"{type(e).__name__}: {e}"
        sig = v.signature_fields or {}
        fields = [
            "pass" if ok else "fail",
            sig.get(b"d", b"").decode(),
            sig.get(b"s", b"").decode(),
            sig.get(b"a", b"").decode(),
            re.sub(rb"\s+", b"", sig.get(b"h", b"")).decode(),
            (err or "").replace("\t", " ").replace("\n", " "),
        ]
        print("\t".join(fields))
        ok_all = ok_all and ok
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
