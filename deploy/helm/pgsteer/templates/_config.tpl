{{/* pgsteer.toml, from the values. Mount points: /etc/pgsteer (this file), /etc/pgsteer-probe,
/etc/pgsteer-auth, /etc/pgsteer-tls, /etc/pgsteer-server-ca, /etc/pgsteer-peer (deployment.yaml). */}}
{{- define "pgsteer.config" -}}
{{- $v := .Values }}
{{- $ops := include "pgsteer.operators" . | fromYaml }}
{{- $op := index $ops (toString $v.operator) }}
{{- if not $op }}
{{- fail (printf "operator: %q: expected one of %s" (toString $v.operator) (keys $ops | sortAlpha | join ", ")) }}
{{- end }}
{{- $d := $v.discovery }}
{{- $cluster := default $op.cluster $d.cluster }}
{{- $selector := default (printf $op.selector $cluster) $d.selector }}
{{- $preset := $d.preset | default $op.preset }}
{{- $address := default $op.address $d.address }}
{{- $service := $d.service }}
{{- if and (not $service) $op.service }}{{ $service = printf $op.service $cluster }}{{ end }}
{{- if and (eq $address "dns") (not $service) }}
{{- fail "discovery.address dns needs discovery.service (the database pods' headless Service)" }}
{{- end -}}
# pgsteer.toml rendered by the pgsteer Helm chart (operator: {{ $v.operator }}).
[listen]
rw = "0.0.0.0:{{ $v.ports.rw }}"
ro = "0.0.0.0:{{ $v.ports.ro }}"
admin = "0.0.0.0:{{ $v.ports.admin }}"
{{- if include "pgsteer.peering" . }}
peer = "0.0.0.0:{{ $v.peers.port }}"
{{- end }}
{{- range $v.extraListeners }}

[[listen.extra]]
name = {{ .name | toJson }}
address = "0.0.0.0:{{ .port }}"
route = {{ default "primary" .route | toJson }}
{{- if .pool_mode }}
pool_mode = {{ .pool_mode | toJson }}
{{- end }}
{{- end }}

[discovery]
source = "kubernetes"
probe_interval = {{ $d.probeInterval | toJson }}
probe_timeout = {{ $d.probeTimeout | toJson }}
{{- if $d.probe.enabled }}

[discovery.probe]
user = {{ $d.probe.user | toJson }}
password_file = "/etc/pgsteer-probe/{{ $d.probe.passwordKey }}"
{{- if $d.probe.dbname }}
dbname = {{ $d.probe.dbname | toJson }}
{{- end }}
{{- end }}

[discovery.kubernetes]
{{- if $d.namespace }}
namespace = {{ $d.namespace | toJson }}
{{- end }}
selector = {{ $selector | toJson }}
preset = {{ include "pgsteer.tomlValue" $preset }}
port = {{ int $d.port }}
address = {{ $address | toJson }}
{{- if $service }}
service = {{ $service | toJson }}
{{- end }}
{{- $owned := list "listen" "discovery" "tls" "pool" "auth" "peers" }}
{{- $sections := keys $v.config | sortAlpha }}
{{- range $name := concat (list "routing" "drain") (without $sections "routing" "drain") }}
{{- $section := index $v.config $name }}
{{- if has $name $owned }}
{{- fail (printf "config.%s: set it through the chart's own values (%s)" $name $name) }}
{{- end }}
{{- if $section }}

[{{ $name }}]
{{- include "pgsteer.tomlLines" $section }}
{{- end }}
{{- end }}
{{- include "pgsteer.tlsConfig" . }}
{{- if include "pgsteer.pooled" . }}

[pool]
{{- include "pgsteer.tomlLines" $v.pool }}
{{- include "pgsteer.authConfig" . }}
{{- end }}
{{- if include "pgsteer.peering" . }}

[peers]
# id: derived by pgsteer from the environment variable POD_NAME (the pod's name).
secret_file = "/etc/pgsteer-peer/secret"
tls = {{ include "pgsteer.peerTLS" . | toJson }}
{{- if eq (include "pgsteer.peerTLS" .) "mutual" }}
ca_file = "/etc/pgsteer-peer/ca.crt"
{{- end }}

[peers.kubernetes]
# pgsteer's own pods.
selector = "app.kubernetes.io/name={{ include "pgsteer.name" . }},app.kubernetes.io/instance={{ .Release.Name }}"
port = {{ int $v.peers.port }}
{{- end }}
{{- end }}

{{- define "pgsteer.tlsConfig" -}}
{{- $t := .Values.tls }}
{{- $verifies := has $t.serverMode (list "verify-ca" "verify-full") }}
{{- if not (has $t.serverMode (list "disable" "prefer" "require" "verify-ca" "verify-full")) }}
{{- fail (printf "tls.serverMode: %q: expected disable, prefer, require, verify-ca or verify-full" $t.serverMode) }}
{{- end }}
{{- if and $verifies (not $t.serverCASecret) }}
{{- fail (printf "tls.serverMode %s needs tls.serverCASecret (the servers' CA)" $t.serverMode) }}
{{- end }}
{{- if and $t.serverCASecret (not $verifies) }}
{{- fail "tls.serverCASecret is only used with tls.serverMode verify-ca or verify-full" }}
{{- end }}
{{- if and (not $t.existingSecret) (or $t.clientCA (eq $t.clientMode "require")) }}
{{- fail "tls.clientMode require and tls.clientCA need tls.existingSecret (the certificate pgsteer serves)" }}
{{- end }}
{{- if and $t.clientCA (ne $t.clientMode "require") }}
{{- fail "tls.clientCA needs tls.clientMode: require" }}
{{- end }}
{{- if or $t.existingSecret (ne $t.serverMode "disable") }}

[tls]
{{- if $t.existingSecret }}
cert_file = "/etc/pgsteer-tls/tls.crt"
key_file = "/etc/pgsteer-tls/tls.key"
client_mode = {{ $t.clientMode | toJson }}
{{- if $t.clientCA }}
client_ca_file = "/etc/pgsteer-tls/ca.crt"
{{- end }}
{{- if $t.reloadInterval }}
reload_interval = {{ $t.reloadInterval | toJson }}
{{- end }}
{{- end }}
server_mode = {{ $t.serverMode | toJson }}
{{- if $t.serverCASecret }}
server_ca_file = "/etc/pgsteer-server-ca/{{ $t.serverCAKey }}"
{{- end }}
{{- end }}
{{- end }}

{{- define "pgsteer.authConfig" -}}
{{- $a := .Values.auth }}
{{- if and (ne $a.method "trust") (not $a.existingSecret) }}
{{- fail (printf "pooled mode with auth.method %s needs auth.existingSecret (userlist.txt and the keys it names)" $a.method) }}
{{- end }}
{{- if and $a.authQuery (not $a.authUser) }}
{{- fail "auth.authQuery needs auth.authUser" }}
{{- end }}
{{- if and (ne $a.method "trust") (not $a.userlistKey) (not $a.authQuery) }}
{{- fail "pooled mode needs auth.userlistKey or auth.authQuery" }}
{{- end }}

[auth]
method = {{ $a.method | toJson }}
{{- if $a.existingSecret }}
{{- if $a.userlistKey }}
auth_file = "/etc/pgsteer-auth/{{ $a.userlistKey }}"
{{- end }}
{{- if $a.authQuery }}
auth_query = {{ $a.authQuery | toJson }}
auth_user = {{ $a.authUser | toJson }}
{{- end }}
{{- if $a.authPasswordKey }}
auth_password_file = "/etc/pgsteer-auth/{{ $a.authPasswordKey }}"
{{- end }}
{{- if $a.saltKeyKey }}
salt_key_file = "/etc/pgsteer-auth/{{ $a.saltKeyKey }}"
{{- end }}
{{- end }}
{{- if $a.cacheTtl }}
cache_ttl = {{ $a.cacheTtl | toJson }}
{{- end }}
{{- end }}
