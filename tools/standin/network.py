"""A stand-in server's network: a namespace, a veth pair, and an nft table that lets it
reach Debian's mirror and nothing else."""

import ipaddress
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from tools.processes import locked
from tools.standin.image import mirrors
from tools.standin.machine import StandinError, sh

SUBNETS = ipaddress.ip_network('10.213.0.0/16')  # one /24 per server: .1 here, .2 there


NETWORK_LOCK = Path('/run/lock/app-deploy-standin.lock')


# Holds ip_forward's value before the first server turned it on, until the last one ends.
FORWARD_MARK = Path('/run/app-deploy-standin.ip_forward')


NETNS = re.compile(r'app-deploy-standin-(\d+)-([a-z][a-z0-9]*)')


def connect(made):
    """Make the server's namespace, veth pair and firewall table.

    Returns the veth's name here, the server's address, this machine's address on the
    veth (the server's gateway) and the {host name: address} of the mirrors it may reach.
    Under a lock, so that two runs do not pick the same free subnet.
    """
    netns, alias = made['netns'], made['alias']
    with locked(NETWORK_LOCK, 'Waiting for another run that sets up a stand-in server'):
        subnet = free_subnet()
        gateway, address = (str(subnet[1]), str(subnet[2]))
        veth = f'adts{subnet.network_address.packed[2]}'  # at most 15 characters
        sh('ip', 'netns', 'add', netns)
        sh('ip', 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'host0', 'netns', netns)
        sh('ip', 'link', 'set', veth, 'alias', alias)
        sh('ip', 'address', 'add', f'{gateway}/{subnet.prefixlen}', 'dev', veth)
        sh('ip', 'link', 'set', veth, 'up')
    mirror_hosts = resolve_mirrors()
    allow_mirror(made['table'], address, sorted(set(mirror_hosts.values())))
    return veth, address, gateway, mirror_hosts


def free_subnet():
    """The first /24 of SUBNETS that overlaps no address or route on this machine."""
    used = [
        ipaddress.ip_interface(f'{info["local"]}/{info["prefixlen"]}').network
        for link in json.loads(sh('ip', '-json', '-4', 'address'))
        for info in link.get('addr_info', [])
    ]
    used += [
        ipaddress.ip_network(route['dst'], strict=False)
        for route in json.loads(sh('ip', '-json', '-4', 'route', 'show', 'table', 'all'))
        if route.get('dst', 'default') != 'default'
    ]
    for subnet in list(SUBNETS.subnets(new_prefix=24))[1:]:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise StandinError(f'no free /24 left in {SUBNETS} for a stand-in server')


def resolve_mirrors():
    """{host name: IPv4 address} of the Debian mirrors, resolved here."""
    found = {}
    for url in mirrors():
        hostname = urlsplit(url).hostname
        try:
            found[hostname] = socket.getaddrinfo(hostname, 80, socket.AF_INET)[0][4][0]
        except OSError as error:
            raise StandinError(f'cannot resolve the Debian mirror {hostname}: {error}') from None
    return found


def allow_mirror(table, address, mirror_addresses):
    """Let ``address`` reach the mirror (ports 80 and 443) through this machine, only that.

    One nft table holds all the rules; deleting it removes them all. Forwarding is
    turned on for the machine: FORWARD_MARK keeps its old value for the last server
    to put back.
    """
    forward = Path('/proc/sys/net/ipv4/ip_forward')
    with locked(NETWORK_LOCK, 'Waiting for another run that sets up a stand-in server'):
        if forward.read_text().strip() != '1' and not FORWARD_MARK.exists():
            FORWARD_MARK.write_text(forward.read_text())
            forward.write_text('1')
    mirror = ', '.join(mirror_addresses)
    # Forwarded: the server's connections to the mirror and their replies pass; anything
    # else from or to it is dropped (this machine's own ssh to it is not forwarded).
    rules = f"""
        table ip {table} {{
            chain forward {{
                type filter hook forward priority filter; policy accept;
                ip saddr {address} ip daddr {{ {mirror} }} tcp dport {{ 80, 443 }} accept
                ip daddr {address} ct state established,related accept
                ip saddr {address} drop
                ip daddr {address} drop
            }}
            chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr {address} ip daddr {{ {mirror} }} masquerade
            }}
        }}
    """
    sh('nft', '-f', '-', input=rules)


def allow(client, server, port):
    """Let the server at ``client`` (table, address) open TCP connections to ``port``
    of the one at ``server``, and nothing more; the replies pass. The rules go at the
    top of both servers' tables (each drops the rest), and go with them."""
    (client_table, client_address), (server_table, server_address) = client, server
    new = f'ip saddr {client_address} ip daddr {server_address} tcp dport {port} accept'
    for table in (client_table, server_table):
        sh('nft', 'insert', 'rule', 'ip', table, 'forward', *new.split())
    reply = f'ip saddr {server_address} ip daddr {client_address} ct state established accept'
    sh('nft', 'insert', 'rule', 'ip', server_table, 'forward', *reply.split())


def delete_netns(netns):
    if netns_exists(netns):
        sh('ip', 'netns', 'delete', netns)


def delete_veths(alias):
    for veth in veths(alias):
        sh('ip', 'link', 'delete', veth)


def netns_exists(netns):
    return netns in sh('ip', 'netns', 'list').split()


def netns_pids(netns):
    return sh('ip', 'netns', 'pids', netns).split() if netns_exists(netns) else []


def delete_table(table):
    if f'table ip {table}' in sh('nft', 'list', 'tables').splitlines():
        sh('nft', 'delete', 'table', 'ip', table)


def veths(alias):
    """The names of the interfaces here whose alias is ``alias``."""
    links = json.loads(sh('ip', '-json', 'link', 'show', 'type', 'veth'))
    return [link['ifname'] for link in links if link.get('ifalias') == alias]


def restore_forwarding():
    """Put ip_forward back as it was, when no stand-in server is left and no Podman
    bridge (containers forward through it too: stage 08's tests)."""
    with locked(NETWORK_LOCK, 'Waiting for another run that sets up a stand-in server'):
        links = [link['ifname'] for link in json.loads(sh('ip', '-json', 'link'))]
        if (
            FORWARD_MARK.exists()
            and not any(NETNS.fullmatch(n) for n in sh('ip', 'netns', 'list').split())
            and not any(re.fullmatch(r'(cni-)?podman\d+', link) for link in links)
        ):
            Path('/proc/sys/net/ipv4/ip_forward').write_text(FORWARD_MARK.read_text())
            FORWARD_MARK.unlink()
