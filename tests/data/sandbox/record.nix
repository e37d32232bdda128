derivation { name="rec"; system="x86_64-linux"; builder="/bin/sh"; passAsFile=["big"]; big="hello"; args=["-c" ''
  export PATH=/usr/bin:/bin
  echo "== env"; env | sort
  echo "== id"; id
  echo "== pid $$"
  echo "== hostname $(cat /proc/sys/kernel/hostname) $(cat /proc/sys/kernel/domainname)"
  echo "== net"; ls /sys/class/net; cat /proc/net/dev
  echo "== dev"; ls -la /dev /dev/pts
  echo "== status"; grep -E 'Seccomp|NoNewPrivs|CapEff|CapBnd' /proc/self/status
  echo "== umask $(umask)"; echo "== cwd $(pwd)"; ls -la /build /
  echo "== etc"; for f in /etc/*; do echo "-- $f"; cat $f; done
  echo "== mounts"; cat /proc/self/mountinfo
  echo "== limits"; cat /proc/self/limits
  echo "== personality"; cat /proc/self/personality 2>&1
  echo "== fds"; ls -la /proc/self/fd
  echo "== tty"; tty; stty -a <&2 2>&1
  echo done > $out
''];}
