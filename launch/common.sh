# Shared by the launch scripts (sourced, not run).

# Print a command so that it can be pasted into a shell (single-quoting only the words that need it).
show() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
