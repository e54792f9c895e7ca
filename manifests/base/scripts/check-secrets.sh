# Run first in every pod that reads a Secret, so a deploy without real credentials stops with a
# message naming the Secret, the key and the fix, instead of a server that accepts placeholder keys
# (MinIO would) or a pod stuck in CreateContainerConfigError.
#
#   sh check-secrets.sh SECRET/KEY:MIN_LENGTH...
#
# Each SECRET is mounted at $SECRETS_DIR/SECRET as an optional secret volume, so a missing Secret
# or key shows up here as a missing file rather than stopping the kubelet. POSIX sh and shell
# builtins only: it runs in the mc, MLflow and Postgres images alike.
set -u

secrets_dir=${SECRETS_DIR:-/run/codepmp-secrets}
namespace=${POD_NAMESPACE:-codepmp}
create="sh manifests/bootstrap-secrets.sh --namespace $namespace"

has_files() {
    for entry in "$1"/*; do
        [ -e "$entry" ] && return 0
    done
    return 1
}

failed=0
reported=" "
for spec in "$@"; do
    secret=${spec%%/*}
    key=${spec#*/}
    key=${key%%:*}
    min_length=${spec##*:}
    file=$secrets_dir/$secret/$key
    problem=
    if ! has_files "$secrets_dir/$secret"; then
        case $reported in
            *" $secret "*) ;;
            *) echo "Secret $namespace/$secret is missing or empty: create it with '$create'" >&2 ;;
        esac
        reported="$reported$secret "
        failed=1
        continue
    elif [ ! -e "$file" ]; then
        problem="has no key $key"
    else
        value=
        IFS= read -r value <"$file" || true
        case $value in
            "") problem="key $key is empty" ;;
            replace-me*) problem="key $key is still a placeholder (replace-me...)" ;;
            *)
                if [ "${#value}" -lt "$min_length" ]; then
                    problem="key $key is shorter than $min_length characters"
                fi
                ;;
        esac
    fi
    if [ -n "$problem" ]; then
        echo "Secret $namespace/$secret $problem: set it yourself (manifests/README.md, Secrets)," \
            "or delete the Secret (kubectl -n $namespace delete secret $secret) and rerun '$create'" >&2
        failed=1
    fi
done
if [ "$failed" = 0 ]; then
    echo "Secrets checked: $*"
fi
exit "$failed"
