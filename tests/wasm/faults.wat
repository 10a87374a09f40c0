;; A WASM stage written by hand in WebAssembly text: proof that the batch ABI
;; (pipe_sdk::wasm_abi, README "WASM stages") needs no Rust and no SDK, and the guest of
;; the fault tests (tests/wasm_stages.rs, pipeline/plugin/wasm/tests.rs).
;;
;; It passes every row through (as kept row indexes, so nothing is copied back), and logs
;; "first batch of this instance" on an instance's first batch, which shows when the host
;; re-created it. The first byte of a batch's first cell picks a fault:
;;   L  loops forever          (timeout_ms)
;;   B  grows and fills memory forever   (memory_mb)
;;   T  traps (unreachable)
;;   P  panics: `pipe.panic("boom")`, then traps
;;   X  replies outside its memory
;;   G  replies with a truncated reply
;;   E  refuses the batch with an error status
;; A non-empty config (anything longer than `{}`) is refused.
(module
  (import "pipe" "log" (func $log (param i32 i32)))
  (import "pipe" "panic" (func $panic (param i32 i32)))
  (memory (export "memory") 1)

  ;; 0..: the manifest. 400..: texts. 512..: small replies (zeros unless written).
  (data (i32.const 0) "{\"abi\":1,\"name\":\"faults\",\"version\":\"1.0.0\",\"description\":\"WAT fault guest\",\"stateful\":false,\"sdk_version\":\"0.1.0\"}")
  (data (i32.const 400) "first batch of this instance")
  (data (i32.const 440) "boom")
  (data (i32.const 448) "this guest takes no config")
  (data (i32.const 480) "refused this batch")
  (global $manifest_len i32 (i32.const 114))
  (global $batches (mut i32) (i32.const 0))

  ;; The argument buffer starts at 64 KiB; replies go right after the argument.
  (global $arg i32 (i32.const 65536))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; Grows memory so that it holds `end` bytes; false if it cannot.
  (func $ensure (param $end i32) (result i32)
    (local $have i32)
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.le_u (local.get $end) (local.get $have)) (then (return (i32.const 1))))
    (i32.ne
      (memory.grow
        (i32.div_u
          (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
          (i32.const 65536)))
      (i32.const -1)))

  (func (export "pipe_alloc") (param $len i32) (result i32)
    (if (i32.eqz (call $ensure (i32.add (global.get $arg) (local.get $len))))
      (then (return (i32.const 0))))
    (global.get $arg))

  (func (export "pipe_manifest") (result i64)
    (call $pack (i32.const 0) (global.get $manifest_len)))

  (func (export "pipe_new") (param $ptr i32) (param $len i32) (result i64)
    (if (i32.gt_u (local.get $len) (i32.const 2))
      (then
        ;; status 1 at 600, then the message
        (i32.store (i32.const 600) (i32.const 1))
        (memory.copy (i32.const 604) (i32.const 448) (i32.const 26))
        (return (call $pack (i32.const 600) (i32.const 30)))))
    (call $pack (i32.const 512) (i32.const 4)))

  (func (export "pipe_process") (param $ptr i32) (param $len i32) (result i64)
    (local $rows i32) (local $cols i32) (local $names i32) (local $data i32)
    (local $first i32) (local $reply i32) (local $at i32) (local $i i32)
    (global.set $batches (i32.add (global.get $batches) (i32.const 1)))
    (if (i32.eq (global.get $batches) (i32.const 1))
      (then (call $log (i32.const 400) (i32.const 28))))
    (local.set $rows (i32.load (local.get $ptr)))
    (local.set $cols (i32.load offset=4 (local.get $ptr)))
    (local.set $names (i32.load offset=8 (local.get $ptr)))
    ;; where the text starts: header, cells, positions, names
    (local.set $data
      (i32.add (local.get $ptr)
        (i32.add (i32.const 16)
          (i32.add
            (i32.mul (i32.mul (local.get $rows) (local.get $cols)) (i32.const 12))
            (i32.add (i32.mul (local.get $rows) (i32.const 12)) (local.get $names))))))
    (if (i32.and (i32.gt_u (local.get $rows) (i32.const 0)) (i32.gt_u (local.get $cols) (i32.const 0)))
      (then
        (local.set $first
          (i32.load8_u (i32.add (local.get $data) (i32.load offset=16 (local.get $ptr)))))
        (if (i32.eq (local.get $first) (i32.const 76)) ;; L
          (then (loop $forever (br $forever))))
        (if (i32.eq (local.get $first) (i32.const 66)) ;; B: grow and touch 1 MiB at a time
          (then
            (loop $more
              (local.set $i (memory.grow (i32.const 16)))
              (if (i32.eq (local.get $i) (i32.const -1)) (then unreachable))
              (memory.fill
                (i32.mul (local.get $i) (i32.const 65536)) (i32.const 85) (i32.const 1048576))
              (br $more))))
        (if (i32.eq (local.get $first) (i32.const 84)) ;; T
          (then unreachable))
        (if (i32.eq (local.get $first) (i32.const 80)) ;; P
          (then (call $panic (i32.const 440) (i32.const 4)) unreachable))
        (if (i32.eq (local.get $first) (i32.const 88)) ;; X
          (then (return (call $pack (i32.const 0xffff0000) (i32.const 100)))))
        (if (i32.eq (local.get $first) (i32.const 71)) ;; G: says 1000 kept rows, gives none
          (then
            (i32.store (i32.const 560) (i32.const 0))
            (i32.store (i32.const 564) (i32.const 1000))
            (return (call $pack (i32.const 560) (i32.const 8)))))
        (if (i32.eq (local.get $first) (i32.const 69)) ;; E
          (then
            (i32.store (i32.const 600) (i32.const 1))
            (memory.copy (i32.const 604) (i32.const 480) (i32.const 18))
            (return (call $pack (i32.const 600) (i32.const 22)))))))
    ;; The reply, after the argument (8-aligned): status, kept, rejects, reasons_len,
    ;; the kept indexes, then an empty batch with the input's column names.
    (local.set $reply
      (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7)) (i32.const -8)))
    (if (i32.eqz (call $ensure
          (i32.add (local.get $reply)
            (i32.add (i32.const 32) (i32.add (i32.mul (local.get $rows) (i32.const 4)) (local.get $names))))))
      (then unreachable))
    (i32.store (local.get $reply) (i32.const 0))
    (i32.store offset=4 (local.get $reply) (local.get $rows))
    (i32.store offset=8 (local.get $reply) (i32.const 0))
    (i32.store offset=12 (local.get $reply) (i32.const 0))
    (local.set $at (i32.add (local.get $reply) (i32.const 16)))
    (local.set $i (i32.const 0))
    (block $done
      (loop $keep
        (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
        (i32.store (local.get $at) (local.get $i))
        (local.set $at (i32.add (local.get $at) (i32.const 4)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $keep)))
    ;; batch header: 0 rows, the input's columns, its names, no text
    (i32.store (local.get $at) (i32.const 0))
    (i32.store offset=4 (local.get $at) (local.get $cols))
    (i32.store offset=8 (local.get $at) (local.get $names))
    (i32.store offset=12 (local.get $at) (i32.const 0))
    (memory.copy
      (i32.add (local.get $at) (i32.const 16))
      (i32.sub (local.get $data) (local.get $names))
      (local.get $names))
    (local.set $at (i32.add (i32.add (local.get $at) (i32.const 16)) (local.get $names)))
    (call $pack (local.get $reply) (i32.sub (local.get $at) (local.get $reply))))

  (func (export "pipe_finish") (result i64)
    (call $pack (i32.const 512) (i32.const 32)))

  (func (export "pipe_export_state") (result i64)
    (call $pack (i32.const 512) (i32.const 8)))

  (func (export "pipe_import_state") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (i32.const 512) (i32.const 4)))
)
