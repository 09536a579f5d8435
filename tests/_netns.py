"""A network namespace joined to this one by a veth pair, for cutting a
process off from the database and healing it (root only; see Netns.why)."""

from __future__ import annotations

import os
import secrets
import subprocess


class Netns:
    """``ip netns`` NAME with a veth pair: 10.x.y.1 here, 10.x.y.2 there.
    :attr:`why` says why it could not be made (then nothing was)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name, self.here, self.there = f"saga{tag}", f"sgh{tag}", f"sgn{tag}"
        # a /24 of its own, from the tag (tests run in parallel: -n 3)
        net = f"10.{10 + int(tag[:2], 16) % 200}.{int(tag[2:4], 16)}"
        self.host_ip, self.ns_ip = f"{net}.1", f"{net}.2"
        self.why = ""
        if os.getuid() != 0:
            self.why = "network namespaces need root"
            return
        steps = [["ip", "netns", "add", self.name],
                 ["ip", "link", "add", self.here, "type", "veth", "peer", "name", self.there],
                 ["ip", "link", "set", self.there, "netns", self.name],
                 ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.here],
                 ["ip", "link", "set", self.here, "up"],
                 self.inside("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.there),
                 self.inside("ip", "link", "set", self.there, "up"),
                 self.inside("ip", "link", "set", "lo", "up")]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:  # no `ip` (iproute2) here
                self.why = f"cannot set up a network namespace: {exc}"
                self.remove()
                return
            if done.returncode != 0:
                self.why = f"cannot set up a network namespace: {' '.join(step)}: " \
                           f"{done.stderr.strip()}"
                self.remove()
                return

    def inside(self, *argv: str) -> list[str]:
        """`argv`, run in the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.here, "down"], check=True, timeout=30)

    def heal(self) -> None:
        subprocess.run(["ip", "link", "set", self.here, "up"], check=True, timeout=30)

    def remove(self) -> None:
        for step in (["ip", "link", "del", self.here], ["ip", "netns", "del", self.name]):
            try:
                subprocess.run(step, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                pass
