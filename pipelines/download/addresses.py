"""Which resolved addresses a download may connect to: public unicast only.

Python's ``ipaddress`` calls several IPv6 forms global although they carry an IPv4
address that a gateway on the path turns back into IPv4: on a network with a NAT64
gateway ``64:ff9b::a9fe:a9fe`` reaches the cloud metadata service at 169.254.169.254.
So every form that embeds an IPv4 address is decoded and the embedded address judged:

- IPv4-mapped ``::ffff:a.b.c.d`` and IPv4-compatible ``::a.b.c.d`` (RFC 4291 2.5.5),
- IPv4-translated ``::ffff:0:a.b.c.d`` (RFC 2765),
- NAT64 well-known prefix ``64:ff9b::a.b.c.d`` (RFC 6052),
- 6to4 ``2002:AABB:CCDD::/48`` (RFC 3056),
- Teredo ``2001:0::/32`` (RFC 4380): the server and the obfuscated client address.

The NAT64 local-use prefix ``64:ff9b:1::/48`` (RFC 8215) is refused outright: where the
IPv4 address sits depends on the operator's prefix length, so it cannot be decoded.
"""

from __future__ import annotations

import ipaddress

METADATA_HOSTS = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2"})

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address carries ([] for none); None when it may carry
    one that cannot be decoded (the NAT64 local-use prefix)."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64_LOCAL:
        return None
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        return [low32]
    if ip in _COMPATIBLE:
        return [low32] if int(ip) > 1 else []  # :: and ::1 are themselves unspecified and loopback
    if ip in _SIX_TO_FOUR:
        return [ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)]
    if ip in _TEREDO:
        return list(ip.teredo)
    return []


def is_public(address: str) -> bool:
    """Whether ``address`` (a resolved address, maybe with an IPv6 ``%zone``) is a global
    unicast address that no embedded IPv4 form turns into a private or metadata one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is None:
            return False
        candidates = embedded if embedded else candidates
    return all(c.is_global and not c.is_multicast and str(c) not in METADATA_HOSTS for c in candidates)
