"""Bash completion for safcm-master and safcm-minion, generated from their argparse trees.

`safcm-master completion bash` prints the script; it is data (which words
follow which subcommand, which options take a value, what a value or a
positional argument is) and one function that reads it. Nothing is added to
the commands' start-up, and no package is needed (argcomplete would run the
whole CLI on every Tab).

What a value or a positional argument completes to follows from its metavar
(KINDS): a minion id (ID, HOST, TARGET), a job id (JID), a file (FILE), a
directory (DIR); an argument with choices completes to them. Minion ids and
job ids come from the running daemon, through `COMMAND [-c FILE] completion
hosts|jids` (the -c of the command line being completed, if any), which
prints nothing when the daemon cannot be reached: then Tab offers nothing.

NOTE: the tree is read through argparse's attributes `_actions`,
`option_strings`, `nargs`, `choices` and `metavar`, which argparse has kept
for every Python 3 release; tests/master/test_completion.py sources the
script in bash and completes real command lines.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

# What a metavar completes to. Minion ids and jids are asked of the daemon.
HOSTS, JIDS, FILES, DIRS, NOTHING = "@hosts", "@jids", "@files", "@dirs", "@none"
KINDS = {"ID": HOSTS, "HOST": HOSTS, "TARGET": HOSTS, "JID": JIDS, "FILE": FILES, "DIR": DIRS}


def _quote(text: str) -> str:
    """`text` as one bash word ($'...', where \\n is a newline)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"$'{escaped}'"


def _kind(action: argparse.Action) -> str:
    """What the value of `action` completes to: a kind or words, one a line."""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "\n".join(str(c) for c in action.choices)
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return KINDS.get(metavar, NOTHING)


def _walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(path, parser) for `parser` and every subcommand below it: the path is
    the command's words ("safcm-master keys list")."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def bash_script(parser: argparse.ArgumentParser, command: str) -> str:
    """The bash completion script of `command`, whose whole tree is `parser`."""
    name = "_" + command.replace("-", "_")
    subs: dict[str, str] = {}  # path -> its subcommands
    options: dict[str, str] = {}  # path -> every option
    takes: dict[str, str] = {}  # path -> the options that take a value
    values: dict[str, str] = {}  # "path option" -> what its value is
    positionals: dict[str, str] = {}  # "path N" -> what the Nth positional (from 0) is
    counts: dict[str, str] = {}  # path -> how many positionals it has
    repeats: dict[str, str] = {}  # path -> "1" if the last positional takes several
    for path, p in _walk(parser, command):
        opts: list[str] = []
        valued: list[str] = []
        count = 0
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                subs[path] = "\n".join(action.choices)
            elif action.option_strings:
                opts.extend(action.option_strings)
                if action.nargs != 0:
                    valued.extend(action.option_strings)
                    for option in action.option_strings:
                        values[f"{path} {option}"] = _kind(action)
            else:
                positionals[f"{path} {count}"] = _kind(action)
                count += 1
                if action.nargs in ("+", "*"):
                    repeats[path] = "1"
        options[path] = "\n".join(opts)
        takes[path] = "\n".join(valued)
        counts[path] = str(count)

    def table(var: str, data: dict[str, str]) -> str:
        entries = "".join(f"\n    [{_quote(k)}]={_quote(v)}" for k, v in sorted(data.items()))
        return f"declare -gA {name}_{var}=({entries}\n)"

    tables = "\n".join(
        table(var, data)
        for var, data in (
            ("subs", subs),
            ("options", options),
            ("takes", takes),
            ("values", values),
            ("positionals", positionals),
            ("counts", counts),
            ("repeats", repeats),
        )
    )
    return (
        _TEMPLATE.replace("@NAME@", name).replace("@COMMAND@", command).replace("@TABLES@", tables)
    )


# The function that reads the tables. Words are one a line (IFS is a newline
# inside it), so that a choice such as "no response" stays one word.
_TEMPLATE = r"""# bash completion for @COMMAND@, generated by `@COMMAND@ completion bash`.
# Load it in ~/.bashrc with:  source <(@COMMAND@ completion bash)
# or install it:  @COMMAND@ completion bash > /etc/bash_completion.d/@COMMAND@
@TABLES@

@NAME@() {
    local IFS=$'\n'
    local cur=${COMP_WORDS[COMP_CWORD]} path=@COMMAND@ config="" want="" npos=0 i w kind words
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $'\n'${@NAME@_takes[$path]}$'\n' == *$'\n'"$w"$'\n'* ]]; then
            [[ $w == -c || $w == --config ]] && config=${COMP_WORDS[i + 1]}
            ((i + 1 == COMP_CWORD)) && want="$path $w"
            ((i++))
        elif [[ $w == -* ]]; then
            :
        elif [[ $'\n'${@NAME@_subs[$path]}$'\n' == *$'\n'"$w"$'\n'* && -n $w ]]; then
            path="$path $w"
            npos=0
        else
            ((npos++))
        fi
    done
    if [[ -n $want ]]; then
        kind=${@NAME@_values[$want]}
    elif [[ $cur == -* ]]; then
        kind=${@NAME@_options[$path]}
    elif [[ -n ${@NAME@_subs[$path]} ]]; then
        kind=${@NAME@_subs[$path]}
    else
        if ((npos >= ${@NAME@_counts[$path]:-0})) && [[ -n ${@NAME@_repeats[$path]} ]]; then
            npos=$((${@NAME@_counts[$path]} - 1))
        fi
        kind=${@NAME@_positionals["$path $npos"]}
    fi
    local -a ask=()  # the settings of the command line being completed
    [[ -n $config ]] && ask=(-c "$config")
    case $kind in
    @hosts) words=$("${COMP_WORDS[0]}" "${ask[@]}" completion hosts 2>/dev/null) ;;
    @jids) words=$("${COMP_WORDS[0]}" "${ask[@]}" completion jids 2>/dev/null) ;;
    @files)
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
        ;;
    @dirs)
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -d -- "$cur"))
        return 0
        ;;
    @none) words="" ;;
    *) words=$kind ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    for i in "${!COMPREPLY[@]}"; do
        printf -v 'COMPREPLY[i]' '%q' "${COMPREPLY[i]}"
    done
    return 0
}
complete -F @NAME@ @COMMAND@
"""
