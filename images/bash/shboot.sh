# Bootstrap of the bash sandbox. The runner writes NUL-separated NAME=value pairs to fd 3
# (PARAMETERS and PARAM_<KEY>); they become environment variables of a fresh bash that runs the
# code. `export "$entry"` takes the pair as data: nothing in it is evaluated. Outside a container
# (the srt and inprocess modes) there is no runner: ATHENA_PARAMS_FILE names the pairs' file.
#
# A session (ATHENA_SESSION=1): calls arrive on fd 3 as "<length>\n" and the pairs; each call's
# code is sourced into this one shell (its working directory, variables and functions stay for
# the next call), and "<status>\n" goes to fd 5 when it is done. PARAM_ variables are the
# call's own. `exit` in the code ends the shell, and with it the session's state.
if [ "${ATHENA_SESSION-}" = 1 ]; then
  unset ATHENA_SESSION ATHENA_PARAMS_FILE ATHENA_OUTPUT_FILE
  exec 4>&-
  __athena_code=$1
  __athena_next() {
    local LC_ALL=C __athena_size __athena_entry __athena_used=0 __athena_name
    IFS= read -r __athena_size <&3 || return 1
    for __athena_name in $(compgen -v PARAM_); do unset "$__athena_name"; done
    while (( __athena_used < __athena_size )); do
      IFS= read -r -d '' __athena_entry <&3 || return 1
      __athena_used=$(( __athena_used + ${#__athena_entry} + 1 ))
      export "$__athena_entry"
    done
  }
  while __athena_next; do
    # shellcheck disable=SC1090
    source "$__athena_code"
    printf '%s\n' "$?" >&5
  done
  exit 0
fi
if [ -n "${ATHENA_PARAMS_FILE-}" ]; then
  exec 3<"$ATHENA_PARAMS_FILE"
fi
unset ATHENA_PARAMS_FILE ATHENA_OUTPUT_FILE
while IFS= read -r -d '' entry; do
  export "$entry"
done <&3
unset entry
exec 3<&- 4>&-
exec /bin/bash "$1"
