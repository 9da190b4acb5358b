# Bootstrap of the bash sandbox. The runner writes NUL-separated NAME=value pairs to fd 3
# (PARAMETERS and PARAM_<KEY>); they become environment variables of a fresh bash that runs the
# code. `export "$entry"` takes the pair as data: nothing in it is evaluated. Outside a container
# (the srt and inprocess modes) there is no runner: ATHENA_PARAMS_FILE names the pairs' file.
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
