# appl %preun: on erase (not upgrade), stop and disable appld.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now appld.service >/dev/null 2>&1 || :
fi
