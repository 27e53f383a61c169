{{/* Names and labels. */}}
{{- define "pgsteer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release name alone when it already contains the chart name ("pgsteer" gives pgsteer,
pgsteer-rw, pgsteer-ro: the names of the kustomize base). */}}
{{- define "pgsteer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pgsteer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgsteer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pgsteer.labels" -}}
{{ include "pgsteer.selectorLabels" . }}
app.kubernetes.io/component: router
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "pgsteer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgsteer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether peering is on: peers.enabled, or when unset, more than one replica. */}}
{{- define "pgsteer.peering" -}}
{{- $on := .Values.peers.enabled }}
{{- if kindIs "invalid" $on }}{{ $on = gt (int .Values.replicaCount) 1 }}{{ end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* peers.tls as "off" or "mutual" (YAML 1.1 reads an unquoted off as false). */}}
{{- define "pgsteer.peerTLS" -}}
{{- $t := .Values.peers.tls }}
{{- if or (kindIs "bool" $t) (kindIs "invalid" $t) }}{{ $t = "off" }}{{ end }}
{{- if not (has $t (list "off" "mutual")) }}
{{- fail (printf "peers.tls: %q: expected off or mutual" $t) }}
{{- end }}
{{- $t }}
{{- end }}

{{- define "pgsteer.peerSecretName" -}}
{{- default (printf "%s-peer" (include "pgsteer.fullname" .)) .Values.peers.existingSecret }}
{{- end }}

{{/* Whether any listener is pooled: [pool] and [auth] are written then. */}}
{{- define "pgsteer.pooled" -}}
{{- $pooled := ne (toString .Values.pool.mode) "passthrough" }}
{{- range .Values.extraListeners }}
{{- if ne (toString (default $.Values.pool.mode .pool_mode)) "passthrough" }}{{ $pooled = true }}{{ end }}
{{- end }}
{{- if $pooled }}true{{ end }}
{{- end }}

{{/* Per operator: the preset, the selector (with %s for the cluster name), the example cluster
name of its overlay, and the address mode. The same settings as deploy/kustomize/overlays. */}}
{{- define "pgsteer.operators" -}}
patroni:
  preset: patroni
  selector: application=patroni,cluster-name=%s
  cluster: pg
  address: ip
spilo:
  preset: spilo
  selector: application=spilo,cluster-name=%s
  cluster: acid-minimal-cluster
  address: ip
cloudnativepg:
  preset: cloudnativepg
  selector: cnpg.io/cluster=%s,cnpg.io/podRole=instance
  cluster: cluster-example
  address: ip
crunchy:
  preset: crunchy
  selector: postgres-operator.crunchydata.com/cluster=%s,postgres-operator.crunchydata.com/instance
  cluster: hippo
  address: ip
kubegres:
  preset:
    label: replicationRole
    primary: [primary]
    replica: [replica]
  selector: app=%s
  cluster: mypostgres
  address: dns
  service: "%s"
{{- end }}

{{/* A TOML value: strings as basic strings (JSON's escapes are TOML's), whole numbers without a
fraction, lists as arrays, maps as inline tables. */}}
{{- define "pgsteer.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "pgsteer.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "pgsteer.tomlKey" $k }} = {{ include "pgsteer.tomlValue" (index $v $k) }}{{ end }} }
{{- else }}{{ fail (printf "pgsteer.toml: cannot write %v (%s)" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "pgsteer.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* The key = value lines of a table, sorted by key; null values are left out. */}}
{{- define "pgsteer.tomlLines" -}}
{{- range $k := keys . | sortAlpha }}
{{- $v := index $ $k }}
{{- if not (kindIs "invalid" $v) }}
{{ include "pgsteer.tomlKey" $k }} = {{ include "pgsteer.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}
