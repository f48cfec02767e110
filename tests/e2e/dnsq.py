#!/usr/bin/env python3
"""A small DNS client and a fake upstream resolver for the DNS tests (no dig here).

  dnsq.py ask SERVER[:PORT] NAME [TYPE] [--tcp] [--rd]
      prints `rcode=NOERROR aa=1 tc=0` then one line per record:
      `answer NAME TTL TYPE DATA`, `authority …`, `additional …`
  dnsq.py serve ADDR:PORT COUNTFILE
      answers A for names under example.test. (TTL 60, 192.0.2.7) and NXDOMAIN with an
      SOA for the rest, over UDP, writing how many queries it had into COUNTFILE
"""
import random, socket, struct, sys

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
         28: "AAAA", 33: "SRV", 255: "ANY"}
CODES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def enc_name(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dec_name(msg, off):
    labels, jumped, end = [], False, off
    for _ in range(128):
        n = msg[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0 == 0xC0:
            ptr = struct.unpack("!H", msg[off:off + 2])[0] & 0x3FFF
            if not jumped:
                end = off + 2
            jumped, off = True, ptr
            continue
        labels.append(msg[off + 1:off + 1 + n].decode())
        off += 1 + n
    return ".".join(labels) + ".", (end if jumped else off)


def rdata(msg, t, off, ln):
    d = msg[off:off + ln]
    if t == 1:
        return socket.inet_ntop(socket.AF_INET, d)
    if t == 28:
        return socket.inet_ntop(socket.AF_INET6, d)
    if t in (2, 5, 12):
        return dec_name(msg, off)[0]
    if t == 33:
        p, w, port = struct.unpack("!HHH", d[:6])
        return f"{p} {w} {port} {dec_name(msg, off + 6)[0]}"
    if t == 6:
        m, o = dec_name(msg, off)
        r, o = dec_name(msg, o)
        return f"{m} {r} " + " ".join(str(x) for x in struct.unpack("!IIIII", msg[o:o + 20]))
    if t == 16:
        out, i = [], 0
        while i < len(d):
            out.append(d[i + 1:i + 1 + d[i]].decode())
            i += 1 + d[i]
        return " ".join(f'"{s}"' for s in out)
    return d.hex()


def ask(server, name, qtype="A", tcp=False, rd=False):
    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "53")
    qid = random.randint(0, 65535)
    q = struct.pack("!HHHHHH", qid, 0x0100 if rd else 0, 1, 0, 0, 0) + enc_name(name) + struct.pack("!HH", CODES[qtype], 1)
    if tcp:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(struct.pack("!H", len(q)) + q)
        ln = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
        msg = s.recv(ln, socket.MSG_WAITALL)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(q, (host, int(port)))
        msg = s.recv(65535)
    rid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    assert rid == qid, "id mismatch"
    print(f"rcode={RCODES.get(flags & 0xF, flags & 0xF)} aa={flags >> 10 & 1} tc={flags >> 9 & 1}")
    off = 12
    for _ in range(qd):
        _, off = dec_name(msg, off)
        off += 4
    for section, count in (("answer", an), ("authority", ns), ("additional", ar)):
        for _ in range(count):
            n, off = dec_name(msg, off)
            t, _c, ttl, ln = struct.unpack("!HHIH", msg[off:off + 10])
            off += 10
            if t != 41:
                print(f"{section} {n} {ttl} {TYPES.get(t, t)} {rdata(msg, t, off, ln)}")
            off += ln


def serve(addr, countfile):
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    count = 0
    while True:
        q, peer = s.recvfrom(4096)
        count += 1
        with open(countfile, "w") as f:
            f.write(str(count))
        qid, flags = struct.unpack("!HH", q[:4])
        name, off = dec_name(q, 12)
        qtype = struct.unpack("!H", q[off:off + 2])[0]
        question = q[12:off + 4]
        if name.lower().endswith("example.test.") and qtype == 1:
            rr = enc_name(name) + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.7")
            head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
        else:
            soa = enc_name("ns.test") + enc_name("root.test") + struct.pack("!IIIII", 1, 60, 60, 60, 10)
            rr = enc_name("test") + struct.pack("!HHIH", 6, 1, 10, len(soa)) + soa
            head = struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 1, 0)
        s.sendto(head + question + rr, peer)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "serve":
        serve(a[1], a[2])
    else:
        pos = [x for x in a[1:] if not x.startswith("--")]
        ask(pos[0], pos[1], pos[2] if len(pos) > 2 else "A", "--tcp" in a, "--rd" in a)
