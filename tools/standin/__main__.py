"""python3 -m tools.standin NAME... [--key FILE.pub]: boot stand-in servers until Ctrl-C."""

import argparse
import contextlib
import sys
import time

from tools import noxrun
from tools.standin.host import REBOOTED, let_reach, reaches, running
from tools.standin.machine import StandinError


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python3 -m tools.standin',
        description='Boot stand-in servers (Debian 13, systemd) until Ctrl-C, for Part 6.',
    )
    parser.add_argument(
        'names',
        nargs='+',
        metavar='NAME',
        help='staging, production, ... (backup, which the others reach by ssh: Part 9;'
        ' monitor, which reaches their exporters and sites: Part 10)',
    )
    parser.add_argument(
        '--key', metavar='PUBLIC_KEY', help='let your key in, e.g. ~/.ssh/app_deploy.pub'
    )
    args = parser.parse_args(argv)
    noxrun.stop_on_signals()  # SIGTERM and SIGHUP stop us as Ctrl-C does
    try:
        with contextlib.ExitStack() as stack:
            hosts = [stack.enter_context(running(name, args.key)) for name in args.names]
            by_name = {host.name: host for host in hosts}
            for client, server, port in reaches(by_name):  # Parts 9 and 10
                let_reach(by_name[client], by_name[server], port)
            for host in hosts:
                print(f'{host.name} is up at {host.address}. Log in with:\n    {host.ssh_line}')
            print('Ctrl-C stops the servers and removes them.', flush=True)
            while all(host.process.poll() in (None, REBOOTED) for host in hosts):
                time.sleep(0.5)
            print('A server powered off; stopping the others.', file=sys.stderr)
    except KeyboardInterrupt:
        print('Stopped; the servers are halted and removed.', file=sys.stderr)
    except StandinError as error:
        sys.exit(f'standin: {error}')


if __name__ == '__main__':
    main()
