#!/bin/bash
# vgpumon validation rig: runs on the GPU machine, from anywhere (it finds its files next to
# itself; tests/gpu/run_on_gpu.sh calls it with the case "none": build only).
#
#   bash tests/gpu/rig/device_run.sh [CASES...]     (default: all cases)
#
# 1. env facts (nvcc, nvidia-smi, cmake, ...)      -> $ART/env/
# 2. unpack src/llama.cpp.tar.gz (next to this script), configure + build llama-server,
#    llama-cli, llama-simple with CUDA (sm_90, shared libs) in /tmp/vgpurig
#    (outside the repo copy; reused if the machine is still warm)
# 3. server cases: full offload, partial, CPU, CPU with no visible GPU,
#    LD_PRELOAD shim, symlinked-libcuda shim, kill -SEGV crash (shell parent
#    and python parent), real SIGSEGV inside the shim
# Everything lands in $ART; at the end (or when time runs short) it is packed
# to $OUT/artifacts.tgz.  Deadline-aware: RIG_DEADLINE_S (default 570) from
# start; cases that would not fit are skipped and can be run by a later call
# on the same warm machine (done cases are remembered in /tmp/vgpurig/done).
set -u
T0=$(date +%s)
DEADLINE=$((T0 + ${RIG_DEADLINE_S:-570}))
RIG=$(cd "$(dirname "$0")" && pwd)
W=${RIG_W:-/tmp/vgpurig}
ART=$W/art
OUTD=${OUT:-/tmp/vgpurig-out}
SRC=$W/llama.cpp
B=$W/build
BIN=$B/bin
mkdir -p "$W" "$ART" "$OUTD" "$W/done"
CALLN=$(( $(cat $W/calls 2>/dev/null || echo 0) + 1 )); echo $CALLN > $W/calls
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

left() { echo $((DEADLINE - $(date +%s))); }
log() { echo "[rig +$(( $(date +%s) - T0 ))s] $*"; }
pack() {
    log "packing artifacts"
    tar czf "$OUTD/artifacts.tgz" -C "$W" art 2>/dev/null
    ls -la "$OUTD"
}
trap pack EXIT

# ---------------------------------------------------------------- env facts
E=$ART/env; mkdir -p $E
log "call #$CALLN on $(hostname); warm-reuse check: $(ls $W | tr '\n' ' ')"
echo "call $CALLN at $(date -u +%FT%TZ): W contents before: $(ls $W | tr '\n' ' ')" >> $E/warm_reuse.txt
if [ ! -f $E/nvidia-smi.txt ]; then
    { nvcc --version; } > $E/nvcc.txt 2>&1
    nvidia-smi > $E/nvidia-smi.txt 2>&1
    nvidia-smi -q > $E/nvidia-smi-q.txt 2>&1
    { cmake --version; ninja --version; gcc --version | head -1; ldd --version | head -1; } > $E/tools.txt 2>&1
    { uname -a; nproc; free -g; df -h / /tmp; cat /proc/sys/kernel/core_pattern; ulimit -c;
      cat /proc/sys/kernel/print-fatal-signals /proc/sys/debug/exception-trace 2>&1; } > $E/system.txt 2>&1
    ldconfig -p | grep -Ei 'cuda|nvidia|cublas|nccl' > $E/ldconfig_cuda.txt 2>&1
    which readelf nm curl strace gdb > $E/which.txt 2>&1
    cat $E/nvcc.txt $E/nvidia-smi.txt $E/tools.txt | grep -Ev '^\s*$' | head -40
fi

# ---------------------------------------------------------------- build
build() {
    if [ -x $BIN/llama-server ] && [ -f $W/build.rc ] && [ "$(cat $W/build.rc)" = 0 ]; then
        log "build present from an earlier call (warm machine): reusing"; return 0; fi
    if [ ! -f $W/build.started ]; then
        rm -rf $SRC; mkdir -p $SRC $ART/build
        tar xzf $RIG/src/llama.cpp.tar.gz -C $SRC --strip-components=1 || { log "untar failed"; return 1; }
        local c0=$(date +%s)
        cmake -S $SRC -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON \
            -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
            -DLLAMA_BUILD_UI=OFF -DGGML_CUDA_NCCL=OFF -DGGML_CCACHE=OFF > $ART/build/configure.log 2>&1
        local crc=$?
        echo "configure_rc=$crc configure_s=$(( $(date +%s) - c0 ))" | tee $ART/build/build_time.txt
        [ $crc = 0 ] || { tail -30 $ART/build/configure.log; return 1; }
        date +%s > $W/build.started
        # own session, so a build that outlives this call keeps going on a warm machine
        setsid nohup bash -c "cmake --build $B --target llama-server llama-cli llama-simple -j16 > $ART/build/build.log 2>&1; echo \$? > $W/build.rc; date +%s > $W/build.ended" > /dev/null 2>&1 < /dev/null &
        log "build started in background (setsid)"
    fi
    local last=0
    while [ ! -f $W/build.rc ]; do
        if [ $(left) -lt 15 ]; then log "build still running; deadline near: $(tail -1 $ART/build/build.log)"; return 2; fi
        sleep 5
        if [ $(( $(date +%s) - last )) -ge 60 ]; then last=$(date +%s); log "build: $(tail -1 $ART/build/build.log | cut -c1-150)"; fi
    done
    local s=$(cat $W/build.started) e=$(cat $W/build.ended)
    echo "build_rc=$(cat $W/build.rc) build_s=$((e - s)) (cmake --build --target llama-server llama-cli llama-simple -j16, $(nproc) cores)" | tee -a $ART/build/build_time.txt
    grep -Ei 'error|warning: .*deprecated' $ART/build/build.log | head -20
    [ "$(cat $W/build.rc)" = 0 ] || { tail -40 $ART/build/build.log; return 1; }
    { ls -la $BIN; } > $ART/build/bin_ls.txt 2>&1
    { for f in $BIN/llama-server $BIN/libggml-cuda.so $BIN/libggml.so $BIN/libllama.so; do
        echo "== $f"; readelf -d $f | grep -E 'NEEDED|RPATH|RUNPATH|SONAME'; done; } > $ART/build/readelf_dynamic.txt 2>&1
    ldd $BIN/llama-server > $ART/build/ldd_llama-server.txt 2>&1
    ldd $BIN/libggml-cuda.so > $ART/build/ldd_libggml-cuda.txt 2>&1
    nm -D --undefined-only $BIN/libggml-cuda.so | grep -E ' cu[A-Z]' > $ART/build/libggml-cuda_driver_imports.txt 2>&1
    $BIN/llama-server --version > $ART/build/llama-server_version.txt 2>&1
    cp $ART/build/build_time.txt $OUTD/ 2>/dev/null
    return 0
}

build; BRC=$?
if [ $BRC != 0 ]; then log "build not ready (rc=$BRC); stopping this call"; exit 0; fi

# ---------------------------------------------------------------- model
MODEL=$RIG/src/tiny.gguf
M=$ART/model; mkdir -p $M
if [ ! -f $M/sha256.txt ]; then
    PYTHONPATH=$SRC/gguf-py python3 $RIG/make_tiny_gguf.py --vocab $SRC/models/ggml-vocab-llama-spm.gguf \
        --out $W/tiny_device.gguf > $M/make_tiny_gguf_on_device.txt 2>&1
    sha256sum $MODEL $W/tiny_device.gguf > $M/sha256.txt 2>&1; cat $M/sha256.txt
fi
[ -f $MODEL ] || MODEL=$W/tiny_device.gguf

# ---------------------------------------------------------------- shim
SH=$W/shim; mkdir -p $SH/sym $ART/shim_build
if [ ! -f $SH/libvgpu-cuda.so ]; then
    gcc -shared -fPIC -O2 -Wall -o $SH/libvgpu-cuda.so $RIG/shim/vgpu_shim.c -ldl > $ART/shim_build/gcc_preload.txt 2>&1
    REALCUDA=$(readlink -f "$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')")
    echo "$REALCUDA" > $SH/realcuda; echo "real libcuda: $REALCUDA" > $ART/shim_build/real_libcuda.txt
    python3 $RIG/shim/gen_forwarders.py --real "$REALCUDA" --exclude-from $SH/libvgpu-cuda.so --out $SH/fwd.c > $ART/shim_build/gen_forwarders.txt 2>&1
    gcc -shared -fPIC -O2 -Wall -Wl,-soname,libvgpu-cuda.so -o $SH/sym/libvgpu-cuda.so $RIG/shim/vgpu_shim.c $SH/fwd.c -ldl > $ART/shim_build/gcc_symlink.txt 2>&1
    ln -sf libvgpu-cuda.so $SH/sym/libcuda.so.1
    ls -la $SH $SH/sym >> $ART/shim_build/gcc_symlink.txt 2>&1
fi
REALCUDA=$(cat $SH/realcuda)

# ---------------------------------------------------------------- helpers
PORT=18100
snapshot() {  # pid dir tag
    local pid=$1 d=$2 t=$3
    cp /proc/$pid/maps $d/maps_$t.txt 2>> $d/errors.txt
    awk '$6 ~ /^\// {print $6}' $d/maps_$t.txt | sort -u > $d/mapped_files_$t.txt
    grep -E '\.so' $d/mapped_files_$t.txt > $d/so_list_$t.txt
    grep -Ei 'ggml|cuda|cudart|cublas|nvidia|vgpu|nvrtc|nccl' $d/mapped_files_$t.txt > $d/gpu_libs_$t.txt
    grep -Ei 'nvidia|/dev/' $d/maps_$t.txt | awk '{print $6}' | sort | uniq -c > $d/dev_mappings_$t.txt
    ls -l /proc/$pid/fd 2>/dev/null | awk '$10 == "->" {print $11}' | sed -E 's/[0-9]+/N/g' | sort | uniq -c > $d/fds_$t.txt
    grep -E '^(Name|State|PPid|Threads|VmRSS|VmSize)' /proc/$pid/status > $d/status_$t.txt
}
start_server() {  # dir ngl [env...] -- [extra args]
    local d=$1 ngl=$2; shift 2
    local envs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    PORT=$((PORT + 1))
    mkdir -p $d
    local cmd=(env ${envs[@]+"${envs[@]}"} $BIN/llama-server -m $MODEL -ngl $ngl --host 127.0.0.1 --port $PORT -c 512 -np 1 "$@")
    echo "${cmd[*]}" > $d/command.txt
    "${cmd[@]}" > $d/server.log 2>&1 &
    SPID=$!
    echo $SPID > $d/pid.txt
}
stop_server() {  # pid dir
    local pid=$1 d=$2
    kill -TERM $pid 2>/dev/null
    for i in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { echo "still alive after 10s SIGTERM; SIGKILL" >> $d/errors.txt; kill -KILL $pid; }
    wait $pid; local rc=$?
    echo "exit_status_after_SIGTERM=$rc" > $d/exit_status.txt
}
extract() {  # dir
    local d=$1
    grep -E 'offload|layers to GPU|ggml_cuda_init|CUDA|Device [0-9]|model buffer size|KV buffer size|compute buffer size|using device|system_info|vgpu-shim|error|failed' $d/server.log > $d/key_log_lines.txt
}
case_server() {  # name ngl [env...] -- [args]
    local name=$1; shift
    local d=$ART/$name
    [ -f $W/done/$name ] && { log "case $name already done"; return 0; }
    [ $(left) -lt 40 ] && { log "skip $name: too little time"; return 1; }
    log "case $name: start"
    start_server $d "$@"; local pid=$SPID
    python3 $RIG/req.py health $PORT $d/health.txt 60 $pid; local hrc=$?
    if [ $hrc = 0 ]; then
        snapshot $pid $d after_load
        python3 $RIG/req.py completion $PORT $d/completion.txt "Hello, my name is" 16
        snapshot $pid $d after_completion
        tr '\0' '\n' < /proc/$pid/cmdline > $d/cmdline_args.txt
        tr '\0' ' ' < /proc/$pid/cmdline > $d/cmdline.txt; echo >> $d/cmdline.txt
        tr '\0' '\n' < /proc/$pid/environ | grep -E '^(LD_PRELOAD|LD_LIBRARY_PATH|CUDA_VISIBLE_DEVICES|VGPU_)' > $d/environ_selected.txt
        readlink /proc/$pid/exe > $d/exe.txt
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv > $d/nvidia_smi_compute_apps.csv 2>&1
        nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > $d/nvidia_smi_compute_apps_named.csv 2>&1
        nvidia-smi > $d/nvidia_smi_during.txt 2>&1
    else
        echo "health rc=$hrc" >> $d/errors.txt
    fi
    stop_server $pid $d
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv > $d/nvidia_smi_compute_apps_after_exit.csv 2>&1
    extract $d
    log "case $name: health_rc=$hrc $(cat $d/exit_status.txt); $(grep -m1 'offloaded' $d/server.log)"
    touch $W/done/$name
}
kmsg_mark() { dmesg 2>&1 | tail -n 1; }

case_crash_shell() {
    local name=crash_sigsegv_shell d=$ART/crash_sigsegv_shell
    [ -f $W/done/$name ] && return 0
    [ $(left) -lt 40 ] && { log "skip $name"; return 1; }
    log "case $name: start"
    mkdir -p $d; dmesg > $d/dmesg_before_full.txt 2>&1; local nb=$(wc -l < $d/dmesg_before_full.txt)
    ( ulimit -c 0
      start_server $d 99 -- -lv 4; pid=$SPID
      python3 $RIG/req.py health $PORT $d/health.txt 60 $pid
      snapshot $pid $d before_kill
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv > $d/nvidia_smi_compute_apps.csv 2>&1
      echo "kill -SEGV $pid at $(date +%s.%N)" > $d/parent_shell_view.txt
      kill -SEGV $pid
      wait $pid; rc=$?
      echo "wait \$pid -> \$? = $rc  (128+11=139 means killed by SIGSEGV)" >> $d/parent_shell_view.txt
      echo "kill -0 after wait: $(kill -0 $pid 2>&1 || true)" >> $d/parent_shell_view.txt
      echo "ulimit -c: $(ulimit -c); core_pattern: $(cat /proc/sys/kernel/core_pattern)" >> $d/parent_shell_view.txt
    ) > $d/shell_stdout.txt 2>&1
    PORT=$((PORT + 1))
    sleep 1
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv > $d/nvidia_smi_compute_apps_after_crash.csv 2>&1
    dmesg > $d/dmesg_after_full.txt 2>&1; tail -n +$((nb + 1)) $d/dmesg_after_full.txt > $d/dmesg_new_lines.txt
    tail -n 20 $d/dmesg_after_full.txt > $d/dmesg_tail.txt; rm -f $d/dmesg_before_full.txt $d/dmesg_after_full.txt
    extract $d
    log "case $name: $(tail -3 $d/parent_shell_view.txt | head -1); dmesg new lines: $(wc -l < $d/dmesg_new_lines.txt)"
    touch $W/done/$name
}
case_crash_python() {
    local name=crash_sigsegv_python_parent d=$ART/crash_sigsegv_python_parent
    [ -f $W/done/$name ] && return 0
    [ $(left) -lt 40 ] && { log "skip $name"; return 1; }
    log "case $name: start"; mkdir -p $d
    PORT=$((PORT + 1))
    ( ulimit -c 0; python3 $RIG/parent_spawn.py $d $PORT -- $BIN/llama-server -m $MODEL -ngl 99 --host 127.0.0.1 --port $PORT -c 512 -np 1 -lv 4 ) > $d/parent_stdout.txt 2>&1
    extract $d
    log "case $name: $(grep -E 'returncode|WTERMSIG' $d/parent_view.txt | tr '\n' ' ')"
    touch $W/done/$name
}
case_shim_crash() {  # a real SIGSEGV inside the shim (NULL deref) during CUDA init
    local name=crash_real_segv_in_shim d=$ART/crash_real_segv_in_shim
    [ -f $W/done/$name ] && return 0
    [ $(left) -lt 40 ] && { log "skip $name"; return 1; }
    log "case $name: start"; mkdir -p $d
    dmesg > $d/dmesg_before_full.txt 2>&1; local nb=$(wc -l < $d/dmesg_before_full.txt)
    ( ulimit -c 0
      start_server $d 99 LD_PRELOAD=$SH/libvgpu-cuda.so VGPU_SHIM_CRASH=cuDeviceGetAttribute -- -lv 4; pid=$SPID
      python3 $RIG/req.py health $PORT $d/health.txt 30 $pid
      if kill -0 $pid 2>/dev/null && [ "$(awk '{print $3}' /proc/$pid/stat)" != Z ]; then
          echo "server did NOT crash (shim hook not hit?); stopping it" >> $d/errors.txt; kill -TERM $pid; fi
      wait $pid; rc=$?
      echo "wait \$pid -> \$? = $rc  (139 = 128+SIGSEGV)" > $d/parent_shell_view.txt
    ) > $d/shell_stdout.txt 2>&1
    PORT=$((PORT + 1))
    sleep 1
    dmesg > $d/dmesg_after_full.txt 2>&1; tail -n +$((nb + 1)) $d/dmesg_after_full.txt > $d/dmesg_new_lines.txt
    rm -f $d/dmesg_before_full.txt $d/dmesg_after_full.txt
    extract $d
    log "case $name: $(cat $d/parent_shell_view.txt); dmesg: $(head -2 $d/dmesg_new_lines.txt)"
    touch $W/done/$name
}

# ---------------------------------------------------------------- cases
ALL="gpu_full_ngl99 gpu_partial_ngl2 cpu_ngl0 crash_sigsegv_shell shim_preload_ngl99 crash_sigsegv_python_parent crash_real_segv_in_shim cpu_ngl0_no_visible_gpu shim_symlink_ngl99 gpu_full_ngl99_default_verbosity"
CASES=${*:-$ALL}
for c in $CASES; do
    case $c in
        # -lv 4: this llama.cpp logs libllama INFO lines (load_tensors: offloaded N/M layers
        # to GPU, ...) only at verbosity 4 ("trace"); the default (3) hides them
        gpu_full_ngl99)   case_server $c 99 -- -lv 4 ;;
        gpu_partial_ngl2) case_server $c 2 -- -lv 4 ;;
        cpu_ngl0)         case_server $c 0 -- -lv 4 ;;
        cpu_ngl0_no_visible_gpu) case_server $c 0 CUDA_VISIBLE_DEVICES= -- -lv 4 ;;
        gpu_full_ngl99_default_verbosity) case_server $c 99 ;;
        shim_preload_ngl99)
            case_server $c 99 LD_PRELOAD=$SH/libvgpu-cuda.so -- -lv 4
            LD_PRELOAD=$SH/libvgpu-cuda.so ldd $BIN/llama-server > $ART/$c/ldd_with_preload.txt 2>&1 ;;
        shim_symlink_ngl99)
            case_server $c 99 LD_LIBRARY_PATH=$SH/sym VGPU_SHIM_REAL_LIBCUDA=$REALCUDA -- -lv 4
            LD_LIBRARY_PATH=$SH/sym ldd $BIN/libggml-cuda.so > $ART/$c/ldd_libggml-cuda_with_symlink.txt 2>&1 ;;
        crash_sigsegv_shell)         case_crash_shell ;;
        crash_sigsegv_python_parent) case_crash_python ;;
        crash_real_segv_in_shim)     case_shim_crash ;;
        *) log "unknown case $c" ;;
    esac
done
log "done; $(left)s left before the rig deadline"
