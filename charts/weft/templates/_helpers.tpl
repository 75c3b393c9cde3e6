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
