"""python3 -m tools.standin NAME... [--key FILE.pub]: boot stand-in servers until Ctrl-C."""

import argparse
import contextlib
import sys
import time

from tools import noxrun
from tools.standin.host import REBOOTED, let_reach, running
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
        help='staging, production, ... (and backup, which the others reach by ssh: Part 9)',
    )
    parser.add_argument(
        '--key', metavar='PUBLIC_KEY', help='let your key in, e.g. ~/.ssh/app_deploy.pub'
    )
    args = parser.parse_args(argv)
    noxrun.stop_on_signals()  # SIGTERM and SIGHUP stop us as Ctrl-C does
    try:
        with contextlib.ExitStack() as stack:
            hosts = [stack.enter_context(running(name, args.key)) for name in args.names]
            backups = [host for host in hosts if host.name == 'backup']
            for host in hosts:  # Part 9: the others reach the backup server over ssh
                if backups and host is not backups[0]:
                    let_reach(host, backups[0], 22)
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
