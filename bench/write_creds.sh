#!/usr/bin/env bash
# write_creds.sh FILE SECONDS: a credentials file (fake tokens) expiring SECONDS from now.
at=$(( ($(date +%s) + $2) * 1000 ))
printf '{"claudeAiOauth":{"accessToken":"sk-ant-oat01-benchaccess%032d","refreshToken":"sk-ant-ort01-benchrefresh%032d","expiresAt":%d,"scopes":["user:inference","user:profile"],"subscriptionType":"max"},"mcpOAuth":{"server":{"accessToken":"x"}}}\n' 0 0 "$at" > "$1"
chmod 600 "$1"
