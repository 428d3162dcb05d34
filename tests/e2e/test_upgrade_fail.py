"""A SIGUSR2 upgrade that cannot happen leaves the old pier serving, says why, and a
later upgrade still works: the binary made unexecutable (exec fails), then replaced by a
program that exits before it listens, then by one that closes the pipe and hangs (killed
at the 15 s deadline; the old process never blocks on it), then a good binary installed
again (by rename, as a package manager does): that one takes over, and it is the newly
installed file that runs, not the old inode."""
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpload  # noqa: E402
import pierlib  # noqa: E402
from test_upgrade import alive, read_pid, wait_gone, wait_pid_change  # noqa: E402


def install(src, dst, mode=0o755):
    """Writes src's bytes to a new file renamed over dst (a running binary cannot be
    written in place)."""
    tmp = dst + ".new"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, dst)


class FailedUpgrade(unittest.TestCase):
    def test_old_keeps_serving(self):
        tmp = tempfile.TemporaryDirectory()
        exe = os.path.join(tmp.name, "pier")
        pid_file = os.path.join(tmp.name, "pier.pid")
        real = pierlib.pier_bin()
        install(real, exe)
        os.environ["PIER_BIN"] = exe
        srv = pierlib.Pier("http", "--threads", "2", "--pid-file", pid_file)
        # paced: the hung copy takes 15 s, a shared machine need not spin meanwhile
        load = httpload.Load(srv.host, srv.port, keepalive=2, fresh=1, pause=0.005).start()
        new = None
        try:
            self.assertTrue(load.wait_more(100))
            # 1. exec fails
            os.chmod(exe, stat.S_IRUSR | stat.S_IWUSR)
            srv.signal(signal.SIGUSR2)
            self.assertTrue(srv.wait_stderr("SIGUSR2: cannot run %s: Permission denied; this one keeps serving"
                                            % exe), srv.stderr())
            self.assertTrue(load.wait_more(100), "still serving after a failed exec")
            # 2. the new program runs but exits before it listens
            fake = os.path.join(tmp.name, "fake")
            with open(fake, "w") as f:
                f.write("#!/bin/sh\necho 'fake pier: refusing to start' >&2\nexit 3\n")
            install(fake, exe)
            srv.signal(signal.SIGUSR2)
            self.assertTrue(srv.wait_stderr("exited with status 3 before it listened"), srv.stderr())
            self.assertIn("fake pier: refusing to start", srv.stderr())
            self.assertTrue(load.wait_more(100), "still serving after a new copy that failed")
            self.assertTrue(srv.alive())
            self.assertEqual(read_pid(pid_file), srv.pid, "the pid file still names the old process")
            # 3. the new program closes the pipe but never exits: killed at the deadline
            with open(fake, "w") as f:
                f.write('#!/bin/bash\neval "exec ${PIER_UPGRADE_FD}>&-"\nexec sleep 120\n')
            install(fake, exe)
            srv.signal(signal.SIGUSR2)
            self.assertTrue(srv.wait_stderr("did not listen in time: killed; this one keeps serving", 40),
                            srv.stderr())
            self.assertTrue(load.wait_more(100), "still serving after a new copy that hung")
            # 4. a good binary again: the upgrade goes through
            install(real, exe)
            srv.signal(signal.SIGUSR2)
            new = wait_pid_change(pid_file, srv.pid)
            self.assertIsNotNone(new, srv.stderr())
            self.assertEqual(srv.wait(30), 0, srv.stderr())
            self.assertEqual(os.readlink("/proc/%d/exe" % new), exe, "the installed file runs")
            self.assertTrue(load.wait_more(100), "the new process serves")
        finally:
            st = load.stop()
            print("load:", st)
            if new and alive(new):
                os.kill(new, signal.SIGTERM)
                wait_gone(new)
            srv.kill()
            os.environ["PIER_BIN"] = real
            tmp.cleanup()
        self.assertEqual(st.failures, [], "no request fails")

    def test_stop_during_upgrade(self):
        """SIGTERM while the new copy is still starting: the old process drains and exits
        0, and takes the new copy with it rather than leave a second server behind."""
        tmp = tempfile.TemporaryDirectory()
        exe = os.path.join(tmp.name, "pier")
        real = pierlib.pier_bin()
        install(real, exe)
        os.environ["PIER_BIN"] = exe
        try:
            srv = pierlib.Pier("http")
            fake = os.path.join(tmp.name, "fake")
            with open(fake, "w") as f:
                f.write("#!/bin/sh\necho \"fake pier $$ starting\" >&2\nexec sleep 120\n")
            install(fake, exe)
            srv.signal(signal.SIGUSR2)
            self.assertTrue(srv.wait_stderr("fake pier"), srv.stderr())
            child = int(re.search(r"fake pier (\d+) starting", srv.stderr()).group(1))
            self.assertEqual(srv.stop(15), 0, srv.stderr())
            self.assertIn("was still starting when this one stopped: killed", srv.stderr())
            self.assertTrue(wait_gone(child), "the unfinished new copy is gone")
        finally:
            os.environ["PIER_BIN"] = real
            tmp.cleanup()


if __name__ == "__main__":
    pierlib.run_tests(globals())
