# appl %postun: on upgrade restart a running appld on the new version. On erase, /var/lib/appl
# stays: it holds the HIPAA audit log and its signing keys (retain at least 6 years).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart appld.service >/dev/null 2>&1 || :
else
    echo "appl: /var/lib/appl was kept: it holds the audit log (/var/lib/appl/audit) and its" \
        "signing keys, which HIPAA requires you to retain (6 years). Export and archive it, then" \
        "remove it by hand when your retention policy allows."
fi
