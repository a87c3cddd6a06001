# appl %post: create the appl user and its folders; on first install enable appld.service
# without starting it (there may be no model yet).
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/appl.conf || :
else
    getent group appl-admin >/dev/null || groupadd --system appl-admin
    getent passwd appl >/dev/null || useradd --system --user-group --home-dir /var/lib/appl \
        --no-create-home --shell /sbin/nologin --comment "appl inference daemon" appl
    for g in video render; do
        if getent group "$g" >/dev/null; then usermod --append --groups "$g" appl; fi
    done
fi
systemd-tmpfiles --create /usr/lib/tmpfiles.d/appl.conf >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable appld.service >/dev/null 2>&1 || :
    echo "appl: appld.service is enabled but not started. Copy a model into /var/lib/appl/models," \
        "check /etc/appl/appld.toml, then run 'systemctl start appld' (see /usr/share/doc/appl/INSTALL.md)."
fi
