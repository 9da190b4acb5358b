# Bootstrap of the bash sandbox. The runner writes NUL-separated NAME=value pairs to fd 3
# (PARAMETERS and PARAM_<KEY>); they become environment variables of a fresh bash that runs the
# code. `export "$entry"` takes the pair as data: nothing in it is evaluated.
while IFS= read -r -d '' entry; do
  export "$entry"
done <&3
unset entry
exec 3<&- 4>&-
exec /bin/bash "$1"
