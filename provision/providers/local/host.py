"""What lab machines need of the box's kernel.

Every lab machine shares the box's kernel and, without user namespaces, root's
inotify budget: systemd, containerd's CNI config watcher and the kubelet each take
instances. Debian's default of 128 instances runs out with a few nodes ("failed to
create fsnotify watcher: too many open files" from containerd's CRI plugin), so the
provider raises the limits as kind documents. It only ever raises them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from provision.errors import ProviderError

INOTIFY_MINIMUMS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
}


def raise_inotify_limits(say: Callable[[str], None]) -> None:
    for key, minimum in INOTIFY_MINIMUMS.items():
        path = Path("/proc/sys") / key
        try:
            current = int(path.read_text())
            if current < minimum:
                path.write_text(f"{minimum}\n")
                say(f"raised {key.replace('/', '.')} from {current} to {minimum} (lab machines)")
        except (OSError, ValueError) as exc:
            raise ProviderError(f"cannot raise {key.replace('/', '.')} to {minimum}: {exc}; "
                                f"run `sysctl -w {key.replace('/', '.')}={minimum}` as root"
                                ) from exc


__all__ = ["INOTIFY_MINIMUMS", "raise_inotify_limits"]
