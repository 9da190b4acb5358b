"""Network attempts towards the host: TCP and UDP listeners on every host address, DNS, proxies.

The session's listeners sit on 127.0.0.1, ::1, the primary address and every Docker bridge
gateway (172.17.0.1 ...), TCP and UDP, plus DNS on 127.0.0.1:53; any connection or datagram is
an escape. The code also tries every proxy its environment names (srt's own): they must refuse
the host. No address outside this machine is ever named.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Sec

pytestmark = pytest.mark.security

TCP = {
    "python": r"""
@ATTEMPT@
import base64, json, os, socket, urllib.parse
targets = json.loads('@TCP@')
def attempt(host, port, payload):
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            conn.sendall(payload)
            return 'connected: ' + repr(conn.recv(200))
    except Exception as exc:
        return 'refused: ' + repr(exc)
for host, port in targets:
    print(host, port, attempt(host, port, b'ESCAPE @TOKEN@\n'))
for name in ('localhost', 'host.docker.internal', 'gateway.docker.internal'):
    print(name, attempt(name, targets[0][1], b'ESCAPE @TOKEN@\n'))
for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
    url = os.environ.get(var)
    if not url or not url.startswith('http'):
        continue
    proxy = urllib.parse.urlsplit(url)
    auth = ''
    if proxy.username:
        pair = urllib.parse.unquote(proxy.username) + ':' + urllib.parse.unquote(proxy.password or '')
        auth = 'Proxy-Authorization: Basic ' + base64.b64encode(pair.encode()).decode() + '\r\n'
    for host, port in targets:
        where = '[%s]:%d' % (host, port) if ':' in host else '%s:%d' % (host, port)
        for line in ('CONNECT %s HTTP/1.1' % where, 'GET http://%s/@TOKEN@ HTTP/1.1' % where):
            request = line + '\r\nHost: ' + where + '\r\n' + auth + '\r\n'
            print(var, line, attempt(proxy.hostname, proxy.port or 80, request.encode()))
""",
    "bash": r"""
@ATTEMPT@
for t in @TCP_BASH@; do
  h=${t%:*}; p=${t##*:}
  (echo "ESCAPE @TOKEN@" > "/dev/tcp/$h/$p") 2>/dev/null && echo "connected $t" || echo "refused $t"
done
if command -v curl >/dev/null; then
  for t in @TCP_BASH@; do
    curl -s -m 3 "http://$t/@TOKEN@" ; echo "curl $t: $?"
    for v in "$http_proxy" "$https_proxy" "$ALL_PROXY"; do
      [ -n "$v" ] && curl -s -m 3 --noproxy '' -x "$v" "http://$t/@TOKEN@"; echo "via proxy $t: $?"
      [ -n "$v" ] && curl -s -m 3 --noproxy '' -x "$v" -p "http://$t/@TOKEN@"; echo "connect $t: $?"
    done
  done
fi
echo done
""",
    "javascript": r"""
@ATTEMPT@
const net = require('net');
const http = require('http');
for (const [host, port] of @TCP@) {
  const s = net.connect({host, port, timeout: 3000}, () => {
    console.log('connected', host, port); s.end('ESCAPE @TOKEN@\n');
  });
  s.on('error', (e) => console.log('refused', host, port, e.code));
  s.on('timeout', () => s.destroy());
  http.get({host, port, path: '/@TOKEN@', timeout: 3000}, () => console.log('http', host))
    .on('error', () => {});
}
""",
    "ruby": r"""
@ATTEMPT@
require 'socket'
require 'uri'
targets = JSON.parse('@TCP@')
def attempt(host, port, payload)
  Socket.tcp(host, port, connect_timeout: 3) do |conn|
    conn.write(payload)
    "connected: #{IO.select([conn], nil, nil, 3) ? conn.readpartial(200).inspect : 'silent'}"
  end
rescue Exception => e
  "refused: #{e.inspect}"
end
targets.each { |host, port| puts "#{host} #{port} #{attempt(host, port, "ESCAPE @TOKEN@\n")}" }
%w[localhost host.docker.internal gateway.docker.internal].each do |name|
  puts "#{name} #{attempt(name, targets[0][1], "ESCAPE @TOKEN@\n")}"
end
%w[http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY].each do |var|
  url = ENV[var]
  next unless url&.start_with?('http')
  proxy = URI(url)
  pair = "#{URI.decode_www_form_component(proxy.user || '')}:#{URI.decode_www_form_component(proxy.password || '')}"
  auth = proxy.user ? "Proxy-Authorization: Basic #{[pair].pack('m0')}\r\n" : ''
  targets.each do |host, port|
    where = host.include?(':') ? "[#{host}]:#{port}" : "#{host}:#{port}"
    ["CONNECT #{where} HTTP/1.1", "GET http://#{where}/@TOKEN@ HTTP/1.1"].each do |line|
      request = "#{line}\r\nHost: #{where}\r\n#{auth}\r\n"
      puts "#{var} #{line} #{attempt(proxy.hostname, proxy.port || 80, request)}"
    end
  end
end
""",
}
UDP_AND_DNS = {
    "python": r"""
@ATTEMPT@
import json, socket
name = b''.join(bytes([len(p)]) + p for p in b'@TOKEN@.invalid'.split(b'.')) + b'\x00'
query = b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00' + name + b'\x00\x01\x00\x01'
for host, port in json.loads('@UDP@') + [['127.0.0.1', 53], ['::1', 53]]:
    try:
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(query if port == 53 else b'ESCAPE @TOKEN@', (host, port))
        print('sent', host, port)
    except Exception as exc:
        print('blocked', host, port, repr(exc))
try:
    print('resolved', socket.getaddrinfo('@TOKEN@.invalid', 80))
except Exception as exc:
    print('no resolution', repr(exc))
""",
    "bash": r"""
@ATTEMPT@
for t in @UDP_BASH@ 127.0.0.1:53; do
  h=${t%:*}; p=${t##*:}
  (echo "ESCAPE @TOKEN@" > "/dev/udp/$h/$p") 2>/dev/null && echo "sent $t" || echo "blocked $t"
done
getent hosts @TOKEN@.invalid || echo "no resolution"
""",
    "javascript": r"""
@ATTEMPT@
const dgram = require('dgram');
const dns = require('dns');
for (const [host, port] of @UDP@) {
  const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  s.on('error', (e) => { console.log('blocked', host, e.code); s.close(); });
  s.send('ESCAPE @TOKEN@', port, host, (e) => { console.log('sent', host, e && e.code); s.close(); });
}
dns.lookup('@TOKEN@.invalid', (e, a) => console.log('lookup', e && e.code, a));
""",
    "ruby": r"""
@ATTEMPT@
require 'socket'
name = '@TOKEN@.invalid'.split('.').map { |p| [p.bytesize].pack('C') + p }.join + "\x00"
query = "\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".b + name.b + "\x00\x01\x00\x01".b
(JSON.parse('@UDP@') + [['127.0.0.1', 53], ['::1', 53]]).each do |host, port|
  s = UDPSocket.new(host.include?(':') ? Socket::AF_INET6 : Socket::AF_INET)
  s.send(port == 53 ? query : 'ESCAPE @TOKEN@', 0, host, port)
  s.close
  puts "sent #{host} #{port}"
rescue Exception => e
  puts "blocked #{host} #{port} #{e.inspect}"
end
begin
  puts "resolved #{Addrinfo.getaddrinfo('@TOKEN@.invalid', 80).inspect}"
rescue Exception => e
  puts "no resolution #{e.inspect}"
end
""",
}


def test_tcp_to_host(sec: Sec) -> None:
    """TCP from every language to listeners on every host address (and via proxies) never lands."""
    for language in sec.languages(*TCP):
        sec.run(TCP[language], language, timeout_seconds=60)
    sec.finish()


def test_udp_and_dns(sec: Sec) -> None:
    """UDP datagrams and DNS queries towards the host (127.0.0.1:53 included) never arrive."""
    for language in sec.languages(*UDP_AND_DNS):
        sec.run(UDP_AND_DNS[language], language, timeout_seconds=30)
    sec.finish()
