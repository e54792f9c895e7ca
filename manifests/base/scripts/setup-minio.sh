# The codepmp-buckets Job: the two buckets, and a MinIO user per client limited to its own bucket.
# The root key (codepmp-minio-root) is used here and by the MinIO server only; the pipeline signs
# in as the codepmp-s3 user, MLflow's artifact proxy as the codepmp-mlflow-s3 user. Idempotent, and
# it makes each user's secret key the one in its Secret, so rerunning it after a rotation applies it.
set -eu

policies_dir=${POLICIES_DIR:-/etc/codepmp-minio-policies}

mc alias set --api s3v4 minio "$S3_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
until mc ls minio >/dev/null 2>&1; do
    echo "waiting for $S3_ENDPOINT"
    sleep 3
done

for bucket in codepmp mlflow-artifacts; do
    mc mb --ignore-existing "minio/$bucket"
    mc anonymous set none "minio/$bucket"
done

# ensure_user SECRET POLICY ACCESS_KEY SECRET_KEY
ensure_user() {
    if [ "$3" = "$MINIO_ROOT_USER" ]; then
        # MinIO refuses a user named like root, and the whole point is a key that is not root's.
        echo "Secret $1 key AWS_ACCESS_KEY_ID is MinIO's root user (codepmp-minio-root):" \
            "give $1 a key of its own (manifests/README.md, Upgrading from one shared key)" >&2
        exit 1
    fi
    mc admin policy create minio "$2" "$policies_dir/$2.json"
    mc admin user add minio "$3" "$4" >/dev/null
    # A second attach of the same policy is an error to mc; it is what an idempotent rerun does.
    if ! output=$(mc admin policy attach minio "$2" --user "$3" 2>&1); then
        case $output in
            *"already in effect"* | *"no net effect"*) ;;
            *)
                echo "$output" >&2
                exit 1
                ;;
        esac
    fi
    echo "MinIO user of Secret $1 has policy $2"
}

ensure_user codepmp-s3 codepmp-pipeline "$PIPELINE_ACCESS_KEY_ID" "$PIPELINE_SECRET_ACCESS_KEY"
ensure_user codepmp-mlflow-s3 codepmp-mlflow-artifacts "$MLFLOW_ACCESS_KEY_ID" "$MLFLOW_SECRET_ACCESS_KEY"
