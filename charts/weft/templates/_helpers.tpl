{{/*
Names and labels shared by the templates. The Services, the trust-roots ConfigMap and the
service accounts have fixed names: the injector points every proxy at
`weft-identity.<namespace>.svc.<clusterDomain>:8080` and
`weft-destination.<namespace>.svc.<clusterDomain>:8086`, and proxies expect the identity
service to present the identity of the service account `identity` (the name `weft identity`
gives itself) and the destination service that of `weft-destination` (the account it runs as).
*/}}

{{/* The labels every object of the release carries. */}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
weft.dev/control-plane-ns: {{ .Release.Namespace }}
{{- end }}

{{/*
The labels that select the release's pods; each template adds `app.kubernetes.io/component`
and `weft.dev/control-plane-component` (which also keeps the injector away from the pod).
*/}}
{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image of the control-plane servers. */}}
{{- define "weft.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The proxy image the injector gives meshed pods. */}}
{{- define "weft.proxyImage" -}}
{{ .Values.proxy.image.repository }}:{{ .Values.proxy.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Pod-level settings every control-plane pod shares (under `spec:` of a pod template). */}}
{{- define "weft.podSpec" -}}
automountServiceAccountToken: true
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
The connection caps of a control-plane gRPC listener as flags of `weft identity` or `weft
destination`, list items for `args:`, from the component's values (`.Values.identity` or
`.Values.destination`). Through `int`: helm reads values.yaml's numbers as float64, which
printf's `%v` writes as 1e+06 from a million on, and `%d` not at all. The servers check the
caps at start (at least 1, a client's no more than the listener's).
*/}}
{{- define "weft.connectionCaps" -}}
- {{ printf "--max-connections=%d" (int .maxConnections) | quote }}
- {{ printf "--max-client-connections=%d" (int .maxClientConnections) | quote }}
- {{ printf "--max-handshakes=%d" (int .maxHandshakes) | quote }}
- {{ printf "--max-client-handshakes=%d" (int .maxClientHandshakes) | quote }}
{{- end }}

{{/* Liveness and readiness of a server, on its admin port (named `admin-http`). */}}
{{- define "weft.probes" -}}
livenessProbe:
  httpGet:
    path: /live
    port: admin-http
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 1
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /ready
    port: admin-http
  periodSeconds: 5
  timeoutSeconds: 1
  failureThreshold: 3
{{- end }}

{{/*
The injector's serving certificate, as YAML for `fromYaml`: `source` (`values` or
`generated`) and the base64 of `crt`, `key` and `ca` (the CA the API server verifies it
with). In order: the three injector.webhook.*PEM values, all or none; else what this chart
generated at an earlier install or upgrade, read back from the Secret weft-injector-tls, so
that an upgrade keeps the CA the API server already trusts (under `helm template` nothing is
found); else a new CA (genCA, 10 years) and a certificate it signs for the injector
Service's DNS names (10 years: it is kept, not renewed). Include it once per render: each
call would generate a new pair, and the Secret and the webhook's caBundle must agree.
*/}}
{{- define "weft.injectorTLS" -}}
{{- $w := .Values.injector.webhook }}
{{- $ns := .Release.Namespace }}
{{- if or $w.crtPEM $w.keyPEM $w.caBundlePEM }}
source: values
crt: {{ required "injector.webhook.crtPEM is required with injector.webhook.keyPEM or caBundlePEM: the webhook's PEM certificate for weft-injector.<namespace>.svc; give all three, or none and the chart generates them (see the chart's README)" $w.crtPEM | b64enc }}
key: {{ required "injector.webhook.keyPEM is required with injector.webhook.crtPEM or caBundlePEM: the webhook certificate's PEM private key; give all three, or none and the chart generates them (see the chart's README)" $w.keyPEM | b64enc }}
ca: {{ required "injector.webhook.caBundlePEM is required with injector.webhook.crtPEM or keyPEM: the PEM CA certificate that signed crtPEM; give all three, or none and the chart generates them (see the chart's README)" $w.caBundlePEM | b64enc }}
{{- else }}
{{- $secret := lookup "v1" "Secret" $ns "weft-injector-tls" }}
{{- $crt := dig "data" "tls.crt" "" $secret }}
{{- $key := dig "data" "tls.key" "" $secret }}
{{- $ca := dig "data" "ca.crt" "" $secret }}
{{- if and (eq (dig "metadata" "annotations" "weft.dev/webhook-tls" "" $secret) "generated") $crt $key $ca }}
source: generated
crt: {{ $crt }}
key: {{ $key }}
ca: {{ $ca }}
{{- else }}
{{- $host := printf "weft-injector.%s.svc" $ns }}
{{- $newCA := genCA (printf "weft-injector-ca.%s" $ns) 3650 }}
{{- $names := list "weft-injector" (printf "weft-injector.%s" $ns) $host (printf "%s.%s" $host .Values.clusterDomain) }}
{{- $cert := genSignedCert $host (list) $names 3650 $newCA }}
source: generated
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
ca: {{ $newCA.Cert | b64enc }}
{{- end }}
{{- end }}
{{- end }}
