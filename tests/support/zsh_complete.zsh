# What zsh offers for a command line: zsh -f zsh_complete.zsh FPATH_DIR 'LINE'
# (tests/unit/test_completion.py). An interactive zsh runs on a pseudo-terminal
# (zsh/zpty) with compinit over FPATH_DIR, where _ipspool is installed as the
# package installs it; LINE and a TAB are typed, and compadd is wrapped to
# print each match it is given as "<hit>MATCH" before the line is cleared.
zmodload zsh/zpty
dir=$1
line=$2
zpty z zsh -f -i
zpty -w z "PS1='' RPROMPT=''; fpath=($dir \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  local -a __hits; builtin compadd -A __hits "$@"; (( $#__hits )) || return 1
  print -r -l -- "<hit>"${^__hits}
}'
zpty -w z "print '<ready>'"
zpty -r z out '*<ready>*'
zpty -w -n z "$line"$'\t'
zpty -w -n z $'\C-u'"print '<done>'"$'\n'
zpty -r z out '*<done>*'
print -r -- "$out" | tr -d '\r' | sed -n 's/^.*<hit>//p'
zpty -d z
