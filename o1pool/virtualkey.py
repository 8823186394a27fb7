"""``o1pool virtual-key``: a new virtual key for a gateway client, and the Secret that stores only its
digest (docs/tenants.md#gateway-mode). The key is printed once; nothing keeps it."""

from __future__ import annotations

import argparse
import shlex

from o1sidecar.clients import new_virtual_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="o1pool virtual-key", description=__doc__)
    parser.add_argument("--secret", default="o1pool-virtual-key", help="Name of the Secret to create.")
    parser.add_argument("--namespace", default=None, help="The pool's namespace.")
    parser.add_argument("--item", default="key", help="The Secret's item (the O1Pool's secretRef key).")
    args = parser.parse_args(argv)
    key, digest = new_virtual_key()
    namespace = f" -n {shlex.quote(args.namespace)}" if args.namespace else ""
    print(f"virtual key (give it to the client; it is not stored anywhere): {key}")
    print(f"digest (what the Secret holds): {digest}")
    print(
        f"kubectl create secret generic {shlex.quote(args.secret)}{namespace} "
        f"--from-literal={shlex.quote(args.item)}={digest}"
    )
    return 0
