#!/usr/bin/python3
"""Runs a command under the system call filter of a systemd unit, without systemd.

    seccomp_run.py UNIT [--deny SYSCALL]... -- COMMAND [ARG]...

Reads SystemCallFilter=, SystemCallErrorNumber= and RestrictAddressFamilies= from UNIT,
expands the @groups with `systemd-analyze syscall-filter` (so the groups are the installed
systemd's own), loads the same allow-list as a seccomp filter through libseccomp (Debian's
python3-seccomp; hence /usr/bin/python3), and execs COMMAND under it. --deny takes a call
out of the list on top, as a negative control (the harness must make that call fail).

scripts/package-test.sh runs the packaged ExecStart this way (there is no systemd as PID 1
to do it): io_uring setup must work under the unit's filter. What this does not reproduce:
the mount, user and device sandboxing (ProtectSystem=, PrivateUsers=, ...) and systemd's
own set of always-allowed calls beyond the few listed below.
"""

import errno
import os
import socket
import subprocess
import sys

import seccomp

# Calls systemd permits whatever the filter says (so that it can exec the service).
ALWAYS = ["execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"]
FAMILIES = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6, "AF_UNIX": socket.AF_UNIX}


def groups():
    """Every @group systemd knows, as {name: [members]}."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        check=True, capture_output=True, text=True,
    ).stdout
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("@"):
            current = out.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return out


def expand(names, known, seen=None):
    seen = set() if seen is None else seen
    calls = set()
    for name in names:
        if name.startswith("@"):
            if name in seen:
                continue
            seen.add(name)
            calls |= expand(known[name], known, seen)
        else:
            calls.add(name)
    return calls


def unit_settings(path):
    settings = {}
    with open(path) as unit:
        for line in unit:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def main():
    args = sys.argv[1:]
    if "--" not in args or not args:
        sys.exit(__doc__)
    split = args.index("--")
    unit, options, command = args[0], args[1:split], args[split + 1:]
    denied = {options[i + 1] for i, o in enumerate(options) if o == "--deny"}
    settings = unit_settings(unit)
    known = groups()

    allowed, removed = None, set()
    for value in settings.get("SystemCallFilter", []):
        if value.startswith("~"):
            removed |= expand(value[1:].split(), known)
        elif allowed is None:
            allowed = expand(value.split(), known)
        else:
            allowed |= expand(value.split(), known)
    if allowed is None:
        sys.exit(f"{unit}: no allow-list SystemCallFilter=")
    allowed = (allowed - removed - denied) | (set(ALWAYS) - denied)

    number = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
    action = seccomp.ERRNO(getattr(errno, number)) if number != "kill" else seccomp.KILL
    families = [
        FAMILIES[f] for v in settings.get("RestrictAddressFamilies", []) for f in v.split()
    ]

    flt = seccomp.SyscallFilter(defaction=action)
    skipped = []
    for call in sorted(allowed):
        try:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, call) < 0:
                raise ValueError(call)
            if call == "socket" and families:
                for family in families:
                    flt.add_rule(seccomp.ALLOW, call, seccomp.Arg(0, seccomp.EQ, family))
            else:
                flt.add_rule(seccomp.ALLOW, call)
        except (ValueError, RuntimeError):
            skipped.append(call)  # not a call on this architecture
            continue
    print(
        f"seccomp_run: {len(allowed) - len(skipped)} calls allowed from {unit}"
        f" (io_uring_setup {'allowed' if 'io_uring_setup' in allowed else 'DENIED'};"
        f" denied by --deny: {sorted(denied) or 'none'}), others fail with {number}",
        file=sys.stderr,
    )
    flt.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
