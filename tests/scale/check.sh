#!/usr/bin/env bash
# check.sh KILN DATASETS -- the bounded-memory device build of `kiln build`
# (issue 12), driven as a user would drive it:
#  1. budgets small enough to force many batches and partitions give the
#     same file as the unlimited build (host/device_build.c decision 8),
#     so the same recall against the exact ground truth, and the validator
#     passes; a budget the input cannot fit in is refused up front;
#  2. a build killed at each checkpoint (KILN_TEST_KILL_AT, the library's
#     SIGKILL points) and at a random moment (a real kill -9 from here)
#     resumes with --resume to the identical file; the same seed gives the
#     same bytes on 1 and 2 threads;
#  3. a corrupted, truncated or foreign work dir is refused with a message
#     naming it; a full disk (a file size limit with SIGXFSZ ignored, so
#     writes fail with EFBIG as on a full disk) stops cleanly with the old
#     output untouched, and the work dir then resumes to the identical file.
# Exit 77 = skipped (no OpenCL in this build, or no datasets).
set -uo pipefail
kiln=$1
data=$2
tmp=${KILN_TEST_TMP:-$(dirname "$kiln")/testtmp}/scale
rm -rf "$tmp"
mkdir -p "$tmp"
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; fail=1; }

if ! "$kiln" devices >/dev/null 2>&1; then
  echo "SKIPPED: this kiln has no OpenCL device" >&2
  exit 77
fi
for ds in siftsmall fmnistsmall; do
  [ -r "$data/$ds/${ds}_base.fvecs" ] || { echo "SKIPPED: $data/$ds is absent" >&2; exit 77; }
done

# recall INDEX DS EF: recall@10 at EF from kiln eval against the exact ground truth.
recall() {
  "$kiln" eval "$1" "$data/$2/${2}_query.fvecs" "$data/$2/${2}_groundtruth.ivecs" --ef "$3" --json |
    sed -n 's/.*"recall": \([0-9.]*\).*/\1/p'
}
# json_field FILE KEY: a number from a build's --json line.
json_field() { sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "$1"; }

# tight DS: a budget just above the smallest kiln accepts for DS, found by
# building with what each refusal says it needs (+6 MiB) until a build
# passes: what is resident when the plan is made depends on the OpenCL
# runtime and on sanitizers (ASan's quarantine keeps k-means' freed heap),
# so it is read off this kiln rather than assumed. Small enough to force
# many batches and spills.
tight() { tight_file "$data/$1/${1}_base.fvecs"; }
tight_file() {
  local b=1 need err
  for _ in 1 2 3 4 5; do
    rm -rf "$tmp/probe.kiln" "$tmp/probe.kiln.work"
    if err=$("$kiln" build "$1" -o "$tmp/probe.kiln" --threads 2 \
      --memory-limit "${b}M" 2>&1 >/dev/null); then
      break
    fi
    need=$(sed -n 's/.*it needs at least \([0-9]*\)\.[0-9] MiB.*/\1/p' <<<"$err")
    [ -n "$need" ] || break
    b=$((need + 6))
  done
  rm -rf "$tmp/probe.kiln" "$tmp/probe.kiln.work"
  echo "${b}M"
}

# ---- 1. Budgets ----
declare -A budget
# fmnistsmall's 1000 nodes fit in one partition of the smallest size the
# plan allows (256 nodes' worth of a 2 KiB record, with what a tight budget
# leaves); its split is in the batches, one per cluster.
declare -A min_parts=([siftsmall]=2 [fmnistsmall]=1)
# ... and its 3 clusters of ~660 x 784 floats may share batches two by two.
declare -A min_batches=([siftsmall]=4 [fmnistsmall]=2)
for ds in siftsmall fmnistsmall; do
  base=$data/$ds/${ds}_base.fvecs
  budget[$ds]=$(tight $ds)
  "$kiln" build "$base" -o "$tmp/$ds.free.kiln" --threads 2 --json >"$tmp/$ds.free.json" ||
    bad "$ds: unlimited build failed"
  if "$kiln" build "$base" -o "$tmp/$ds.tight.kiln" --threads 2 --memory-limit "${budget[$ds]}" \
    --json >"$tmp/$ds.tight.json"; then
    b=$(json_field "$tmp/$ds.tight.json" batches)
    p=$(json_field "$tmp/$ds.tight.json" partitions)
    w=$(json_field "$tmp/$ds.tight.json" work_bytes_written)
    c=$(json_field "$tmp/$ds.tight.json" clusters)
    { [ "${b:-0}" -ge "${min_batches[$ds]}" ] || [ "${b:-0}" = "$c" ]; } && [ "${p:-0}" -ge "${min_parts[$ds]}" ] && [ "${w:-0}" -gt 0 ] &&
      ok "$ds: --memory-limit ${budget[$ds]} ran $b batches, $p partitions, spilled $w bytes" ||
      bad "$ds: --memory-limit ${budget[$ds]} did not split the work (batches $b, partitions $p)"
    "$kiln" check "$tmp/$ds.tight.kiln" >/dev/null && ok "$ds: the budgeted index validates" ||
      bad "$ds: the budgeted index does not validate"
    for ef in 16 64; do
      r0=$(recall "$tmp/$ds.free.kiln" $ds $ef)
      r1=$(recall "$tmp/$ds.tight.kiln" $ds $ef)
      awk -v a="$r0" -v b="$r1" 'BEGIN { exit !(a != "" && b != "" && b >= a - 0.003) }' &&
        ok "$ds ef $ef: recall@10 $r1 budgeted, $r0 unlimited" ||
        bad "$ds ef $ef: recall@10 $r1 budgeted against $r0 unlimited"
    done
    cmp -s "$tmp/$ds.free.kiln" "$tmp/$ds.tight.kiln" &&
      ok "$ds: budgeted and unlimited files are identical" ||
      bad "$ds: the budget changed the file"
  else
    bad "$ds: --memory-limit ${budget[$ds]} build failed"
  fi
  [ ! -e "$tmp/$ds.tight.kiln.work" ] && ok "$ds: work dir removed after success" ||
    bad "$ds: work dir left behind after success"
done
# An fbin input's rows are used in place (graph/hnsw_build.c decision 5); under a tight
# budget level 0 goes to the work dir beside them. The file equals the build of the
# same rows read from fvecs (copied) without a limit.
if "$kiln" generate -n 4000 -d 32 --seed 5 -o "$tmp/gen.fbin" >/dev/null &&
  "$kiln" generate -n 4000 -d 32 --seed 5 -o "$tmp/gen.fvecs" >/dev/null; then
  gb=$(tight_file "$tmp/gen.fbin")
  "$kiln" build "$tmp/gen.fvecs" -o "$tmp/gen.free.kiln" --threads 2 >/dev/null ||
    bad "generated fvecs: unlimited build failed"
  if "$kiln" build "$tmp/gen.fbin" -o "$tmp/gen.tight.kiln" --threads 2 --memory-limit "$gb" \
    --json >"$tmp/gen.tight.json"; then
    b=$(json_field "$tmp/gen.tight.json" batches)
    cmp -s "$tmp/gen.free.kiln" "$tmp/gen.tight.kiln" && [ "${b:-0}" -ge 2 ] &&
      ok "generated fbin in place under --memory-limit $gb ($b batches): the file of the unlimited fvecs build" ||
      bad "generated fbin under --memory-limit $gb ($b batches): another file than the fvecs build's"
  else
    bad "generated fbin: --memory-limit $gb build failed"
  fi
else
  bad "kiln generate failed"
fi

base=$data/siftsmall/siftsmall_base.fvecs
if "$kiln" build "$base" -o "$tmp/small.kiln" --memory-limit 2M 2>"$tmp/small.err"; then
  bad "a 2 MiB budget was accepted"
else
  grep -q "too small for this input: it needs at least" "$tmp/small.err" && [ ! -e "$tmp/small.kiln" ] &&
    [ ! -e "$tmp/small.kiln.work" ] && ok "a 2 MiB budget is refused up front: $(cat "$tmp/small.err")" ||
    bad "a 2 MiB budget: $(cat "$tmp/small.err")"
fi

# ---- 2. Kill and resume ----
ref=$tmp/siftsmall.ref.kiln
args=(--threads 2 --memory-limit "${budget[siftsmall]}")
"$kiln" build "$base" -o "$ref" "${args[@]}" >/dev/null || bad "reference build failed"
"$kiln" build "$base" -o "$tmp/t1.kiln" --threads 1 >/dev/null
cmp -s "$ref" "$tmp/t1.kiln" && ok "1 and 2 threads give the same bytes" ||
  bad "1 and 2 threads give different files"
out=$tmp/killed.kiln
for point in clusters:1 batch:1 batch:3 hierarchy:1 forward:1 level0:1; do
  rm -rf "$out" "$out.work"
  KILN_TEST_KILL_AT=$point "$kiln" build "$base" -o "$out" "${args[@]}" >/dev/null 2>&1
  rc=$?
  [ $rc -eq 137 ] && [ ! -e "$out" ] || bad "kill at $point: exit $rc, output present: $([ -e "$out" ] && echo yes || echo no)"
  if "$kiln" build "$base" -o "$out" "${args[@]}" >/dev/null 2>"$tmp/again.err"; then
    bad "kill at $point: a build without --resume reused the work dir"
  else
    grep -q -- "--resume continues it" "$tmp/again.err" || bad "kill at $point: $(cat "$tmp/again.err")"
  fi
  "$kiln" build "$base" -o "$out" "${args[@]}" --resume --json >"$tmp/resumed.json" &&
    cmp -s "$ref" "$out" &&
    ok "killed at $point, resumed ($(json_field "$tmp/resumed.json" resumed_batches) batches reused): identical file" ||
    bad "killed at $point: the resumed file differs or the resume failed"
done
# A real kill -9 at a random moment, three times over one build.
rm -rf "$out" "$out.work"
for delay in 0.15 0.3 0.45; do
  "$kiln" build "$base" -o "$out" "${args[@]}" --resume >/dev/null 2>&1 &
  pid=$!
  sleep $delay
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
done
"$kiln" build "$base" -o "$out" "${args[@]}" --resume >/dev/null && cmp -s "$ref" "$out" &&
  ok "three kill -9 at 0.15/0.3/0.45 s, then --resume: identical file" ||
  bad "kill -9 and resume: the file differs"

# ---- 3. Damaged and foreign work dirs, full disk ----
mk_killed() { # a work dir killed after its third batch
  rm -rf "$out" "$out.work"
  KILN_TEST_KILL_AT=batch:3 "$kiln" build "$base" -o "$out" "${args[@]}" >/dev/null 2>&1
}
expect_refused() { # what, pattern, build args...
  local what=$1 pat=$2
  shift 2
  if "$kiln" build "$base" -o "$out" "$@" >/dev/null 2>"$tmp/ref.err"; then
    bad "$what: accepted"
  elif grep -q -- "$pat" "$tmp/ref.err" && [ ! -e "$out" ]; then
    ok "$what: refused: $(head -c 200 "$tmp/ref.err")"
  else
    bad "$what: $(cat "$tmp/ref.err")"
  fi
}
mk_killed
f=$out.work/batch-000001.kw
printf '\xff' | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 5)) conv=notrunc 2>/dev/null
expect_refused "a corrupted batch file" "batch-000001.kw: checksum mismatch" "${args[@]}" --resume
mk_killed
truncate -s -100 "$out.work/batch-000002.kw"
expect_refused "a truncated batch file" "batch-000002.kw: file size differs" "${args[@]}" --resume
mk_killed
expect_refused "a work dir of another seed" "other inputs or parameters" "${args[@]}" --seed 7 --resume
expect_refused "a work dir of other vectors" "other inputs or parameters" \
  --work-dir "$out.work" --resume "${args[@]}" --metric ip
mk_killed
cp "$out.work/batch-000000.kw" "$tmp/foreign.kw"
rm -rf "$out.work"
KILN_TEST_KILL_AT=batch:1 "$kiln" build "$base" -o "$out" "${args[@]}" --seed 9 >/dev/null 2>&1
cp "$tmp/foreign.kw" "$out.work/batch-000001.kw"
expect_refused "a batch file from another build" "fingerprint differs" "${args[@]}" --seed 9 --resume

# Full disk: the output exists before and must not change.
rm -rf "$out" "$out.work"
echo "the old index" >"$out"
(
  trap '' XFSZ
  ulimit -f 1024 # KiB: smaller than level0.kw and than the index
  exec "$kiln" build "$base" -o "$out" "${args[@]}" 2>"$tmp/full.err" >/dev/null
)
rc=$?
if [ $rc -eq 1 ] && [ "$(cat "$out")" = "the old index" ] && grep -q "work\|kiln-tmp\|write" "$tmp/full.err"; then
  ok "a full disk stops cleanly (exit 1, output untouched): $(head -c 200 "$tmp/full.err")"
else
  bad "a full disk: exit $rc, output '$(head -c 40 "$out")', $(cat "$tmp/full.err")"
fi
"$kiln" build "$base" -o "$out" "${args[@]}" --resume >/dev/null && cmp -s "$ref" "$out" &&
  ok "after the full disk, --resume gives the identical file" ||
  bad "after the full disk, resume failed or differs"

rm -rf "$tmp"
exit $fail
