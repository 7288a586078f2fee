{{/* Helm's labels, on every object beside xdplb's own. */}}
{{- define "xdplb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* The labels that select a component's Pods (as deploy/ has them; immutable in selectors). */}}
{{- define "xdplb.selector" -}}
app.kubernetes.io/name: xdplb
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/*
The objects of a manifest file of deploy/ (linked under files/), moved to the release's
namespace and labelled: one home for what the kustomization and the chart both install.
Takes (list $ "files/NAME.yaml").
*/}}
{{- define "xdplb.fromDeploy" -}}
{{- $root := index . 0 -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" ($root.Files.Get (index . 1)) -1 }}
{{- $obj := fromYaml $doc }}
{{- if $obj.kind }}
{{- $meta := $obj.metadata }}
{{- if hasKey $meta "namespace" }}{{ $_ := set $meta "namespace" $root.Release.Namespace }}{{ end }}
{{- $_ := set $meta "labels" (merge (fromYaml (include "xdplb.labels" $root)) ($meta.labels | default dict)) }}
{{- range $s := $obj.subjects | default list }}
{{- if hasKey $s "namespace" }}{{ $_ := set $s "namespace" $root.Release.Namespace }}{{ end }}
{{- end }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}

{{/* `--metrics-addr` and the secure metrics' flags, for both binaries. */}}
{{- define "xdplb.metricsArgs" -}}
{{- if .Values.metrics.secure.enabled }}
- --metrics-addr=127.0.0.1:{{ .Values.metrics.port }}
- --secure-metrics-addr=0.0.0.0:{{ .Values.metrics.secure.port }}
{{- if .Values.metrics.secure.tlsSecret }}
- --metrics-tls-cert=/etc/xdplb/metrics-tls/tls.crt
- --metrics-tls-key=/etc/xdplb/metrics-tls/tls.key
{{- end }}
{{- else }}
- --metrics-addr=0.0.0.0:{{ .Values.metrics.port }}
{{- end }}
{{- end }}

{{/* Ports, probes for both binaries: the probes go where the metrics are served openly. */}}
{{- define "xdplb.metricsPorts" -}}
{{- if .Values.metrics.secure.enabled }}
- {name: https-metrics, containerPort: {{ .Values.metrics.secure.port }}, protocol: TCP}
{{- end }}
- {name: metrics, containerPort: {{ .Values.metrics.port }}, protocol: TCP}
{{- end }}

{{- define "xdplb.probes" -}}
{{- $port := ternary "https-metrics" "metrics" .Values.metrics.secure.enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $port }}
    {{- if .Values.metrics.secure.enabled }}
    scheme: HTTPS
    {{- end }}
  periodSeconds: 10
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $port }}
    {{- if .Values.metrics.secure.enabled }}
    scheme: HTTPS
    {{- end }}
  periodSeconds: 5
{{- end }}

{{- define "xdplb.tlsVolumeMount" -}}
{{- if and .Values.metrics.secure.enabled .Values.metrics.secure.tlsSecret }}
- {name: metrics-tls, mountPath: /etc/xdplb/metrics-tls, readOnly: true}
{{- end }}
{{- end }}

{{- define "xdplb.tlsVolume" -}}
{{- if and .Values.metrics.secure.enabled .Values.metrics.secure.tlsSecret }}
- name: metrics-tls
  secret: {secretName: {{ .Values.metrics.secure.tlsSecret }}}
{{- end }}
{{- end }}
