# shellcheck shell=bash
# Bash helpers for the local-cluster scripts: plain HTTP GETs over bash's /dev/tcp (no curl
# needed) and a bounded wait on a condition. Source this file; it defines functions only.

# http_get URL: prints the response body; fails unless the status is 200. URL is
# http://HOST:PORT/PATH (loopback services only: no TLS, no redirects). A request that
# gets no answer within 10 s fails.
http_get() {
  local url=$1 rest hostport path host port fd resp status
  rest=${url#http://}
  hostport=${rest%%/*}
  if [[ $rest == */* ]]; then path=/${rest#*/}; else path=/; fi
  host=${hostport%:*}
  port=${hostport##*:}
  exec {fd}<>"/dev/tcp/$host/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&"$fd"
  resp=$(timeout 10 cat <&"$fd")
  exec {fd}>&-
  status=${resp%%$'\r'*}
  [[ $status == "HTTP/1."?" 200"* ]] || return 1
  printf '%s' "${resp#*$'\r\n\r\n'}"
}

# url_encode STRING: percent-encodes everything but unreserved characters (RFC 3986).
url_encode() {
  local s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case "$c" in
      [a-zA-Z0-9.~_-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds; fails
# with a message naming WHAT when SECONDS pass first.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}
