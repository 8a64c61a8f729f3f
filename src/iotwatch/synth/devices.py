"""Legitimate behaviour of each device type, driven by a per-device timer heap."""

from __future__ import annotations

import heapq
import math

from iotwatch.synth.config import CloudConfig, DeviceConfig, SynthConfig
from iotwatch.synth.packets import (
    PROTO_TCP,
    PROTO_UDP,
    TLS_MINOR,
    FlowInfo,
    Host,
    Net,
    Rand,
    Tcp,
    dns_query,
    dns_response,
    kasa_tcp,
    kasa_udp,
    ntp_packet,
    tls_client_hello,
    tls_records,
)

BROADCAST = Host("255.255.255.255", "ff:ff:ff:ff:ff:ff")


class DeviceSim:
    """Common plumbing: addresses, ephemeral ports, DNS cache, NTP, cloud TLS sessions."""

    def __init__(
        self, dc: DeviceConfig, sc: SynthConfig, net: Net, label: str | None = None
    ) -> None:
        self.dc = dc
        self.sc = sc
        self.net = net
        self.rnd: Rand = net.rnd
        self.label = label
        self.host = Host(dc.ip, dc.mac)
        gw = sc.network.gateway
        self.gw_mac = gw.mac
        self.phone = Host(sc.network.phone.ip, sc.network.phone.mac)
        dns_ip = sc.network.dns_server
        self.dns_host = Host(dns_ip, gw.mac)  # the gateway forwards DNS (or routes it out)
        self._wan: dict[str, Host] = {}
        self._port = self.rnd.integer(32768, 60000)
        self._phone_port = self.rnd.integer(32768, 60000)
        self.dns_cache: dict[str, float] = {}
        self.heap: list[tuple[float, int, str, object]] = []
        self._n = 0
        self.sess: Tcp | None = None
        self.sess_end = 0.0

    # -- helpers ---------------------------------------------------------------------------
    def push(self, t: float, kind: str, arg: object = None) -> None:
        """Schedule an event (ties broken by scheduling order, never by object identity)."""
        self._n += 1
        heapq.heappush(self.heap, (t, self._n, kind, arg))

    def activity(self, t: float) -> float:
        """Day/night multiplier for the local hour of ``t``."""
        local = t + self.sc.utc_offset_h * 3600.0
        return self.sc.activity_by_hour[int((local % 86400.0) // 3600.0)]

    def hourly_events(self, t0: float, t1: float, per_h: float, kind: str) -> None:
        """Poisson events at ``per_h`` x activity per hour, scheduled within [t0, t1)."""
        h = math.floor(t0 / 3600.0) * 3600.0
        while h < t1:
            n = self.rnd.poisson(per_h * self.activity(h))
            for _ in range(n):
                t = h + self.rnd.u() * 3600.0
                if t0 <= t < t1:
                    self.push(t, kind)
            h += 3600.0

    def eport(self) -> int:
        """Next ephemeral port of the device (Linux-like sequential allocation)."""
        self._port = 32768 + (self._port - 32768 + 1 + self.rnd.integer(0, 8)) % 28000
        return self._port

    def phone_port(self) -> int:
        """Next ephemeral port the phone app uses towards this device."""
        self._phone_port = 32768 + (self._phone_port - 32768 + 1 + self.rnd.integer(0, 4)) % 28000
        return self._phone_port

    def wan(self, ip: str) -> Host:
        """A WAN host as the LAN sees it (behind the gateway MAC, TTL already decremented)."""
        h = self._wan.get(ip)
        if h is None:
            h = Host(ip, self.gw_mac, wan=True, ttl=self.rnd.ispan(self.sc.network.ttl_wan))
            self._wan[ip] = h
        return h

    def info(
        self, proto: int, dev_port: int, peer: Host, peer_port: int, dev: Host | None = None
    ) -> FlowInfo:
        """Flow bookkeeping record for a new 5-tuple of this device."""
        return FlowInfo(
            proto,
            dev or self.host,
            dev_port,
            peer,
            peer_port,
            self.dc.name,
            self.dc.device_type,
            self.label,
        )

    def rtt(self) -> float:
        """A WAN round-trip time for a new connection."""
        return self.rnd.span(self.sc.network.wan_rtt_ms) / 1000.0

    def dns(self, t: float, name: str, ips: list[str], ttl_s: list[float]) -> float:
        """Resolve ``name`` unless cached: one UDP query and its answer (TTL from ``ttl_s``:
        vendors' load-balanced names answer with seconds, so the device asks again often)."""
        if self.dns_cache.get(name, -1.0) > t:
            return t
        r = self.rnd
        ttl = max(1, int(r.span(ttl_s)))
        sport = r.integer(1024, 65536)
        fid = self.net.em.new_flow(self.info(PROTO_UDP, sport, self.dns_host, 53))
        txid = r.integer(0, 65536)
        self.net.udp(t, fid, self.host, sport, self.dns_host, 53, dns_query(txid, name), True)
        t2 = t + r.uniform(0.002, 0.06)
        self.net.udp(
            t2, fid, self.dns_host, 53, self.host, sport, dns_response(txid, name, ips, ttl), False
        )
        self.dns_cache[name] = t2 + ttl
        return t2

    def ntp(self, t: float) -> None:
        """One NTP client/server exchange with a configured server."""
        r = self.rnd
        srv = self.wan(str(r.choice(self.sc.network.ntp_servers)))
        sport = r.integer(1024, 65536)
        fid = self.net.em.new_flow(self.info(PROTO_UDP, sport, srv, 123))
        self.net.udp(t, fid, self.host, sport, srv, 123, ntp_packet(t, 3, r), True)
        t2 = t + self.rtt()
        self.net.udp(t2, fid, srv, 123, self.host, sport, ntp_packet(t2, 4, r), False)

    def tls_open(self, t: float, cloud: CloudConfig) -> tuple[Tcp, float]:
        """DNS, TCP handshake and a TLS handshake to ``cloud``; returns the connection."""
        r = self.rnd
        v = TLS_MINOR[cloud.tls_version]
        t = self.dns(t, cloud.hostname, cloud.ips, cloud.dns_ttl_s)
        peer = self.wan(str(r.choice(cloud.ips)))
        conn = Tcp(self.net, self.info(PROTO_TCP, self.eport(), peer, cloud.port), True, self.rtt())
        t = conn.connect(t + r.uniform(0.001, 0.01))
        hello = tls_client_hello(r, r.ispan(cloud.tls_client_hello), cloud.hostname, v)
        t = conn.send(t, True, hello)
        flight = tls_records(r, r.ispan(cloud.tls_server_flight), 0x16, minor=v)
        t = conn.send(t + conn._delay(False), False, flight)
        fin = tls_records(r, r.ispan(cloud.tls_client_finish), 0x16, minor=v)
        t = conn.send(t + r.uniform(0.005, 0.05), True, fin)
        fin = tls_records(r, r.ispan(cloud.tls_server_finish), 0x16, minor=v)
        t = conn.send(t + conn._delay(False), False, fin)
        for out, back in cloud.login:  # the firmware's fixed register/login messages
            t = conn.exchange(t + r.uniform(0.005, 0.05), tls_records(r, out, minor=v),
                              tls_records(r, back, minor=v))  # fmt: skip
        return conn, t

    def tls_short(self, t: float, cloud: CloudConfig, out: list[int], back: list[int]) -> float:
        """A short HTTPS-like exchange: open, one request/response, close."""
        r = self.rnd
        v = TLS_MINOR[cloud.tls_version]
        conn, t = self.tls_open(t, cloud)
        t = conn.exchange(t + r.uniform(0.001, 0.02), tls_records(r, r.ispan(out), minor=v),
                          tls_records(r, r.ispan(back), minor=v), think=r.uniform(0.005, 0.1))  # fmt: skip
        rst = r.chance(cloud.rst_close_prob)
        return conn.close(t + r.uniform(0.01, 0.5), dev_first=r.chance(0.7), rst=rst)

    def session(self, t: float) -> tuple[Tcp, float]:
        """The persistent cloud session, reconnecting when its lifetime has run out."""
        r = self.rnd
        cloud = self.dc.cloud
        if self.sess is not None and t >= self.sess_end:
            end = max(self.sess_end, self.sess.t)
            self.sess.close(end, dev_first=r.chance(0.5), rst=r.chance(cloud.rst_close_prob))
            self.sess = None
            t = max(t, end + r.uniform(1.0, 20.0))
        if self.sess is None:
            self.sess, t = self.tls_open(t, cloud)
            self.sess_end = t + r.span(cloud.session_h) * 3600.0
        return self.sess, max(t, self.sess.t)

    def records(self, n: int) -> bytes:
        """``n`` bytes of application records in the TLS version of the device's cloud."""
        cloud = self.dc.cloud
        return tls_records(self.rnd, n, minor=TLS_MINOR[cloud.tls_version] if cloud else 3)

    def keepalive(self, t: float) -> None:
        """Application heartbeat on the cloud session, then schedule the next. A device-sent
        heartbeat is answered by the server; a server-sent one (the cloud polling the device's
        state, as TP-Link's does) is answered by the device."""
        r = self.rnd
        cloud = self.dc.cloud
        conn, t = self.session(t)
        out = self.records(r.ispan(cloud.keepalive_bytes_out))
        back = self.records(r.ispan(cloud.keepalive_bytes_in))
        if cloud.keepalive_from == "device":
            conn.exchange(t, out, back)
        else:
            t = conn.send(t, False, back)
            conn.send(t + conn._delay(True) + r.uniform(0.01, 0.1), True, out)
        self.push(t + r.span(cloud.keepalive_s), "ka")

    def probe(self, t: float) -> None:
        """The server's TCP keep-alive probe on the open session (D-Link's, every 5 s)."""
        if self.sess is not None and self.sess.open and t < self.sess_end:
            self.sess.probe(t, from_dev=False)
        self.push(t + self.rnd.span(self.dc.cloud.probe_s), "probe")

    # -- driver ----------------------------------------------------------------------------
    def start(self, t0: float) -> None:
        """Initial timers (first connection shortly after the capture starts)."""
        r = self.rnd
        if self.dc.cloud is not None:
            self.push(t0 + r.uniform(0.0, 30.0), "ka")
            if self.dc.cloud.probe_s[1] > 0:
                self.push(t0 + 30.0 + r.span(self.dc.cloud.probe_s), "probe")
        self.push(t0 + r.uniform(0.0, self.dc.ntp_s[1]), "ntp")

    def schedule_window(self, t0: float, t1: float) -> None:
        """Time-of-day driven events for the window [t0, t1)."""

    def handle(self, t: float, kind: str, arg: object) -> None:
        """Process one event."""
        if kind == "ka":
            self.keepalive(t)
        elif kind == "probe":
            self.probe(t)
        elif kind == "ntp":
            self.ntp(t)
            self.push(t + self.rnd.span(self.dc.ntp_s), "ntp")

    def run(self, t0: float, t1: float) -> None:
        """Emit everything this device does in [t0, t1)."""
        self.schedule_window(t0, t1)
        while self.heap and self.heap[0][0] < t1:
            t, _, kind, arg = heapq.heappop(self.heap)
            self.handle(t, kind, arg)


class CameraSim(DeviceSim):
    """Security camera: TLS session carrying video chunks; motion raises the bitrate."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.burst_until = 0.0

    def video(self, n: int) -> bytes:
        """``n`` bytes of video in TLS records of ``record_bytes``."""
        cloud = self.dc.cloud
        return tls_records(self.rnd, n, record_max=self.dc.camera.record_bytes,
                           minor=TLS_MINOR[cloud.tls_version])  # fmt: skip

    def start(self, t0: float) -> None:
        """Keep-alive, NTP and video-chunk timers."""
        super().start(t0)
        self.push(t0 + self.rnd.uniform(5.0, 60.0), "chunk")

    def schedule_window(self, t0: float, t1: float) -> None:
        """Motion events follow the day profile."""
        self.hourly_events(t0, t1, self.dc.camera.motion_per_h, "motion")

    def handle(self, t: float, kind: str, arg: object) -> None:
        """Video chunks, motion bursts, or the common events."""
        cam = self.dc.camera
        r = self.rnd
        if kind == "chunk":
            dt = r.span(cam.chunk_s)
            if t >= self.burst_until:
                conn, t = self.session(t)
                n = int(r.span(cam.idle_kbps) * 1000.0 / 8.0 * dt)
                conn.send(t, True, self.video(n))
            self.push(t + dt, "chunk")
        elif kind == "motion":
            dur = r.span(cam.motion_s)
            kbps = r.span(cam.motion_kbps)
            conn, t = self.session(t)
            end = t + dur
            self.burst_until = max(self.burst_until, end)
            # an event notification first, then one video segment per second
            conn.exchange(t, self.records(r.ispan(cam.event_bytes_out)),
                          self.records(r.ispan(cam.event_bytes_in)))  # fmt: skip
            while t < end:
                n = int(kbps * 1000.0 / 8.0 * r.uniform(0.8, 1.2))
                conn.send(max(t, conn.t), True, self.video(n))
                t += 1.0
        else:
            super().handle(t, kind, arg)


class SensorSim(DeviceSim):
    """Motion sensor: keep-alive session, event notifications, status reports."""

    def start(self, t0: float) -> None:
        """Keep-alive, NTP and status timers."""
        super().start(t0)
        self.push(t0 + self.rnd.uniform(60.0, self.dc.sensor.status_s[1]), "status")

    def schedule_window(self, t0: float, t1: float) -> None:
        """Motion follows the day profile."""
        self.hourly_events(t0, t1, self.dc.sensor.motion_per_h, "motion")

    def handle(self, t: float, kind: str, arg: object) -> None:
        """Notifications and reports on short TLS connections."""
        s = self.dc.sensor
        r = self.rnd
        if kind == "motion":
            conn, t1 = self.session(t)  # a push on the session, then the notification service
            t1 = conn.exchange(t1, self.records(r.ispan(s.push_bytes_out)),
                               self.records(r.ispan(s.push_bytes_in)))  # fmt: skip
            self.tls_short(
                t1 + r.uniform(0.01, 0.3), s.event_cloud, s.event_bytes_out, s.event_bytes_in
            )
        elif kind == "status":
            self.tls_short(t, s.event_cloud, s.status_bytes_out, s.status_bytes_in)
            self.push(t + r.span(s.status_s), "status")
        else:
            super().handle(t, kind, arg)


class KasaSim(DeviceSim):
    """TP-Link Kasa bulb or plug: cloud session plus local control from the phone app."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.on = 1
        self.on_since = 0.0
        self.hsb = [0, 0, 100]

    def schedule_window(self, t0: float, t1: float) -> None:
        """App sessions follow the day profile."""
        self.hourly_events(t0, t1, self.dc.tplink.app_sessions_per_h, "app")

    def sysinfo(self, t: float) -> dict:
        """The get_sysinfo answer, with the fields a real device reports."""
        k = self.dc.tplink
        r = self.rnd
        mac = self.dc.mac.upper()
        info: dict = {
            "sw_ver": "1.5.4 Build 180815 Rel.121440",
            "hw_ver": "2.0",
            "model": k.model,
            "deviceId": self.dc.mac.replace(":", "").upper() * 3,
            "oemId": "FFF22CFF774A0B89F7624BFC6F50D5DE",
            "hwId": "044A516EE63C875F9458DA25C2CCC5A0",
            "rssi": -r.integer(40, 75),
            "alias": k.alias,
            "dev_name": "Smart Wi-Fi LED Bulb with Color Changing" if k.kind == "bulb" else "Smart Wi-Fi Plug With Energy Monitoring",
            "mac": mac if k.kind == "plug" else mac.replace(":", ""),
            "updating": 0,
            "latitude_i": 519500,
            "longitude_i": -11500,
        }  # fmt: skip
        if k.kind == "bulb":
            h, s, b = self.hsb
            info |= {
                "mic_type": "IOT.SMARTBULB",
                "is_dimmable": 1,
                "is_color": 1,
                "is_variable_color_temp": 1,
                "light_state": {"on_off": self.on, "mode": "normal", "hue": h, "saturation": s,
                                "color_temp": 0, "brightness": b},
                "preferred_state": [{"index": i, "hue": 0, "saturation": 0, "color_temp": 2700 + 1300 * i,
                                     "brightness": 50 + 10 * i} for i in range(4)],
                "active_mode": "none",
            }  # fmt: skip
        else:
            info |= {
                "type": "IOT.SMARTPLUGSWITCH",
                "icon_hash": "",
                "feature": "TIM:ENE",
                "relay_state": self.on,
                "on_time": int(t - self.on_since) if self.on else 0,
                "active_mode": "schedule",
                "led_off": 0,
            }
        return {"system": {"get_sysinfo": info}}

    def local(self, t: float, request: dict, answer: dict) -> float:
        """One phone→device TCP/9999 exchange on its own connection."""
        r = self.rnd
        info = FlowInfo(PROTO_TCP, self.host, self.dc.tplink.local_port, self.phone, self.phone_port(),
                        self.dc.name, self.dc.device_type, self.label)  # fmt: skip
        lan_rtt = r.span(self.sc.network.lan_rtt_ms) / 1000.0
        conn = Tcp(
            self.net, info, client_is_dev=False, rtt=lan_rtt, lan=True, dev_win=5840, peer_win=65535
        )
        t = conn.connect(t)
        t = conn.send(t + r.uniform(0.001, 0.02), False, kasa_tcp(request))
        t = conn.send(t + r.uniform(0.005, 0.08), True, kasa_tcp(answer))
        return conn.close(t + r.uniform(0.005, 0.2), dev_first=False)

    def command(self, t: float) -> tuple[dict, dict]:
        """A state-changing command and its answer."""
        r = self.rnd
        if self.dc.tplink.kind == "bulb":
            svc = "smartlife.iot.smartbulb.lightingservice"
            self.on = 1
            self.hsb = [r.integer(0, 360), r.integer(0, 101), r.integer(1, 101)]
            h, s, b = self.hsb
            req = {svc: {"transition_light_state": {"on_off": 1, "hue": h, "saturation": s,
                                                    "brightness": b, "color_temp": 0, "transition_period": 150}}}  # fmt: skip
            ans = {svc: {"transition_light_state": {"on_off": 1, "mode": "normal", "hue": h,
                                                    "saturation": s, "color_temp": 0, "brightness": b, "err_code": 0}}}  # fmt: skip
            return req, ans
        self.on = 1 - self.on
        self.on_since = t
        return ({"system": {"set_relay_state": {"state": self.on}}},
                {"system": {"set_relay_state": {"err_code": 0}}})  # fmt: skip

    def poll(self, t: float) -> tuple[dict, dict]:
        """A status poll: sysinfo for the bulb, energy meter (or sysinfo) for the plug."""
        r = self.rnd
        if self.dc.tplink.kind == "plug" and r.chance(0.6):
            p = r.uniform(0.5, 2200.0) if self.on else 0.0
            ans = {"emeter": {"get_realtime": {"voltage_mv": r.integer(228000, 241000),
                                               "current_ma": int(p / 0.235), "power_mw": int(p * 1000),
                                               "total_wh": r.integer(1000, 90000), "err_code": 0}}}  # fmt: skip
            return {"emeter": {"get_realtime": {}}}, ans
        if self.dc.tplink.kind == "bulb" and r.chance(0.3):
            h, s, b = self.hsb
            svc = "smartlife.iot.smartbulb.lightingservice"
            return ({svc: {"get_light_state": {}}},
                    {svc: {"get_light_state": {"on_off": self.on, "mode": "normal", "hue": h, "saturation": s,
                                               "color_temp": 0, "brightness": b, "err_code": 0}}})  # fmt: skip
        return {"system": {"get_sysinfo": {}}}, self.sysinfo(t)

    def handle(self, t: float, kind: str, arg: object) -> None:
        """An app session: discovery broadcast, then polls and commands."""
        if kind != "app":
            super().handle(t, kind, arg)
            return
        r = self.rnd
        k = self.dc.tplink
        # discovery: the phone broadcasts get_sysinfo on UDP 9999, the device answers unicast
        pport = self.phone_port()
        bfid = self.net.em.new_flow(FlowInfo(PROTO_UDP, self.phone, pport, BROADCAST, k.local_port,
                                             None, None, self.label))  # fmt: skip
        self.net.udp(t, bfid, self.phone, pport, BROADCAST, k.local_port,
                     kasa_udp({"system": {"get_sysinfo": {}}}), False)  # fmt: skip
        dfid = self.net.em.new_flow(self.info(PROTO_UDP, k.local_port, self.phone, pport))
        t += r.span(self.sc.network.lan_rtt_ms) / 1000.0 + r.uniform(0.005, 0.05)
        self.net.udp(
            t, dfid, self.host, k.local_port, self.phone, pport, kasa_udp(self.sysinfo(t)), True
        )
        n_poll = r.ispan(k.polls_per_session)
        n_cmd = r.ispan(k.commands_per_session)
        steps = ["poll"] * n_poll + ["cmd"] * n_cmd
        for i in range(len(steps) - 1, 0, -1):  # Fisher-Yates on our own stream
            j = r.integer(0, i + 1)
            steps[i], steps[j] = steps[j], steps[i]
        for step in steps:
            t += r.span(k.poll_gap_s)
            req, ans = self.command(t) if step == "cmd" else self.poll(t)
            t = self.local(t, req, ans)


def http_bytes(head: str, n: int) -> bytes:
    """ASCII HTTP text starting with ``head``, padded with a header line to exactly ``n`` bytes
    (cut short when ``n`` is smaller than ``head``: sizes come from the captures, text does not)."""
    raw = head.encode()
    if len(raw) >= n:
        return raw[:n]
    pad = n - len(raw)
    return raw + (b"X-Pad: " + b"a" * max(0, pad - 9) + b"\r\n")[:pad]


class HueSim(DeviceSim):
    """Philips Hue bridge: short plain-HTTP polls of its portal on its own timer (each after a
    DNS lookup, the portal's name answering with a TTL of seconds), and the phone app's REST
    calls to the bridge's local port 80. No TLS session: the captured bridge uses port 80 only."""

    def start(self, t0: float) -> None:
        """Portal poll and NTP timers."""
        super().start(t0)
        self.push(t0 + self.rnd.span(self.dc.hue.poll_s), "poll")

    def schedule_window(self, t0: float, t1: float) -> None:
        """App sessions follow the day profile."""
        self.hourly_events(t0, t1, self.dc.hue.app_sessions_per_h, "app")

    def poll(self, t: float) -> None:
        """One portal poll: DNS, connect, request in two segments, response, close."""
        h = self.dc.hue
        r = self.rnd
        t = self.dns(t, h.portal_hostname, h.portal_ips, h.portal_dns_ttl_s)
        peer = self.wan(str(r.choice(h.portal_ips)))
        conn = Tcp(
            self.net, self.info(PROTO_TCP, self.eport(), peer, h.portal_port), True, self.rtt()
        )
        t = conn.connect(t + r.uniform(0.001, 0.01))
        head = f"POST /queue/getmessage?duration=180000&ip={self.dc.ip} HTTP/1.0\r\n"
        t = conn.send(t, True, http_bytes("POST ", r.ispan(h.poll_request[0])))
        t = conn.send(
            t + r.uniform(0.0005, 0.003), True, http_bytes(head, r.ispan(h.poll_request[1]))
        )
        body = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        t = conn.send(t + conn._delay(False), False, http_bytes(body, r.ispan(h.poll_response)))
        conn.close(t + r.uniform(0.001, 0.02), dev_first=False)

    def api(self, t: float) -> float:
        """One phone→bridge REST call on its own connection (the bridge is the server)."""
        h = self.dc.hue
        r = self.rnd
        info = FlowInfo(PROTO_TCP, self.host, h.local_port, self.phone, self.phone_port(),
                        self.dc.name, self.dc.device_type, self.label)  # fmt: skip
        lan_rtt = r.span(self.sc.network.lan_rtt_ms) / 1000.0
        conn = Tcp(self.net, info, client_is_dev=False, rtt=lan_rtt, lan=True,
                   dev_win=14480, peer_win=65535)  # fmt: skip
        t = conn.connect(t)
        t = conn.send(
            t + r.uniform(0.001, 0.02), False, http_bytes("GET /api", r.ispan(h.api_request[0]))
        )
        t = conn.send(t + r.uniform(0.0005, 0.003), False,
                      http_bytes("Host: philips-hue\r\n", r.ispan(h.api_request[1])))  # fmt: skip
        body = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[{"success":'
        t = conn.send(t + r.uniform(0.005, 0.05), True, http_bytes(body, r.ispan(h.api_response)))
        return conn.close(t + r.uniform(0.005, 0.1), dev_first=True)

    def handle(self, t: float, kind: str, arg: object) -> None:
        """Portal polls, app sessions, or the common events."""
        h = self.dc.hue
        if kind == "poll":
            self.poll(t)
            self.push(t + self.rnd.span(h.poll_s), "poll")
        elif kind == "app":
            for _ in range(self.rnd.ispan(h.api_requests_per_session)):
                t = self.api(t) + self.rnd.span(h.api_gap_s)
        else:
            super().handle(t, kind, arg)


SIMS = {
    "nest_camera": CameraSim,
    "dlink_motion_sensor": SensorSim,
    "tplink_bulb": KasaSim,
    "tplink_plug": KasaSim,
    "hue_bridge": HueSim,
}
