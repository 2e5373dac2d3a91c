//! A descriptor watched by the JS thread's own event loop (a libuv `uv_poll_t`), so that
//! the kernel's completion of a WAL commit wakes the JS thread directly — one wake-up per
//! awaited commit instead of two through the commit thread (docs/PERFORMANCE.md §2).
//!
//! Node exports libuv's functions, but they are outside Node-API's ABI promise: they are
//! looked up at run time (`dlsym`), and where one is missing — or `UV_POLL` does not name
//! a poll handle — there is no watch and the WAL commits on its commit thread as before.
//! Every function here runs on the JS thread that created the watch.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;
use std::sync::OnceLock;

use napi::{sys, Env};

type PollCb = unsafe extern "C" fn(handle: *mut c_void, status: c_int, events: c_int);
type CloseCb = unsafe extern "C" fn(handle: *mut c_void);

/// `uv_handle_type`'s `UV_POLL` (stable since libuv 1.0; checked by name at run time).
const UV_POLL: c_int = 8;
/// `uv_poll_event`'s `UV_READABLE`.
const UV_READABLE: c_int = 1;

type HandleSize = unsafe extern "C" fn(c_int) -> usize;
type PollInit = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type PollStart = unsafe extern "C" fn(*mut c_void, c_int, PollCb) -> c_int;
type Close = unsafe extern "C" fn(*mut c_void, Option<CloseCb>);
type Unref = unsafe extern "C" fn(*mut c_void);
type TypeName = unsafe extern "C" fn(c_int) -> *const c_char;

/// The libuv functions a watch needs, as the running Node exports them.
struct Uv {
    handle_size: HandleSize,
    poll_init: PollInit,
    poll_start: PollStart,
    close: Close,
    unref: Unref,
}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: `name` is a valid C string; RTLD_DEFAULT searches the objects already loaded
    // (the Node executable exports libuv), and a null result means "absent".
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!found.is_null()).then_some(found)
}

fn uv() -> Option<&'static Uv> {
    static UV: OnceLock<Option<Uv>> = OnceLock::new();
    UV.get_or_init(|| {
        // SAFETY (each transmute): the symbol is libuv's function of that name, whose C
        // signature the pointer type states (uv.h of libuv ≥ 1.19, which Node ships).
        let type_name = unsafe {
            std::mem::transmute::<*mut c_void, TypeName>(symbol(c"uv_handle_type_name")?)
        };
        // SAFETY: uv_handle_type_name returns a static string, or null for an unknown type.
        let name = unsafe { type_name(UV_POLL) };
        // SAFETY: a non-null result is a NUL-terminated static string.
        if name.is_null() || unsafe { CStr::from_ptr(name) } != c"poll" {
            return None;
        }
        unsafe {
            Some(Uv {
                handle_size: std::mem::transmute::<*mut c_void, HandleSize>(symbol(
                    c"uv_handle_size",
                )?),
                poll_init: std::mem::transmute::<*mut c_void, PollInit>(symbol(c"uv_poll_init")?),
                poll_start: std::mem::transmute::<*mut c_void, PollStart>(symbol(
                    c"uv_poll_start",
                )?),
                close: std::mem::transmute::<*mut c_void, Close>(symbol(c"uv_close")?),
                unref: std::mem::transmute::<*mut c_void, Unref>(symbol(c"uv_unref")?),
            })
        }
    })
    .as_ref()
}

/// What the handle, the cleanup hook and the owner share.
struct Ctx {
    /// The `uv_poll_t`'s memory (8-byte aligned): libuv writes it through this pointer
    /// until the close callback; freed with the `Ctx`.
    handle: ptr::NonNull<[u64]>,
    /// Returns whether JS has outcomes to take; then `js` is called.
    on_ready: Box<dyn Fn() -> bool>,
    env: sys::napi_env,
    /// The JS function that takes the outcomes, and the async context its calls run in.
    js: sys::napi_ref,
    async_context: sys::napi_async_context,
    /// `uv_close` was called: by the owner's drop or by the environment's teardown.
    closing: Cell<bool>,
    cleanup: Cell<sys::napi_async_cleanup_hook_handle>,
}

impl Ctx {
    fn handle_ptr(&self) -> *mut c_void {
        self.handle.as_ptr() as *mut c_void
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::into_raw` in `ReadyWatch::start` and freed only here;
        // the last count drops after libuv's close callback (or without the handle ever
        // being initialised), so libuv no longer uses the memory.
        drop(unsafe { Box::from_raw(self.handle.as_ptr()) });
    }
}

impl Ctx {
    /// Closes the handle once; the close callback frees it and ends the cleanup hook.
    fn close(&self, uv: &Uv) {
        if self.closing.replace(true) {
            return;
        }
        // SAFETY: the handle was initialised by uv_poll_init and not closed yet; the close
        // callback runs on this loop later, after which libuv no longer touches it.
        unsafe { (uv.close)(self.handle_ptr(), Some(on_close)) };
    }
}

/// A watch of one descriptor for readability, owned by the WAL handle that created it.
/// Dropping it closes the handle; so does the environment's teardown (a worker thread
/// ending), whichever comes first.
pub struct ReadyWatch {
    ctx: Rc<Ctx>,
}

/// The `Ctx` a handle carries: its `data` field, the first of every libuv handle.
///
/// # Safety
/// `handle` is a handle this module initialised and whose close callback has not run.
unsafe fn ctx_of(handle: *mut c_void) -> *const Ctx {
    unsafe { *(handle as *const *const Ctx) }
}

unsafe extern "C" fn on_readable(handle: *mut c_void, _status: c_int, _events: c_int) {
    // SAFETY: libuv calls this only for a started, not yet closed handle.
    let ctx = unsafe { &*ctx_of(handle) };
    // A panic must not unwind into libuv; the core reports its own failures as outcomes.
    if matches!(
        catch_unwind(AssertUnwindSafe(|| (ctx.on_ready)())),
        Ok(true)
    ) {
        // SAFETY: on the loop's own thread, between two JS turns; the env, reference and
        // async context live until the handle's close callback.
        unsafe { call_js(ctx) };
    }
}

/// Calls the JS function as Node calls a callback from its event loop (`MakeCallback`,
/// whose receiver must be an object: the global one), in a handle scope, with the microtasks it queues run before returning, so the promises
/// it resolves continue now rather than after the loop's next turn. An exception it
/// throws (the TS layer's never does) becomes an uncaught exception, as from any callback.
///
/// # Safety
/// Called on the thread of `ctx.env`'s event loop, outside any JS call.
unsafe fn call_js(ctx: &Ctx) {
    let env = ctx.env;
    let mut scope: sys::napi_handle_scope = ptr::null_mut();
    // SAFETY (each call): `env` is this thread's environment, alive (see above); the
    // out-pointers are valid locals.
    unsafe {
        if sys::napi_open_handle_scope(env, &mut scope) != sys::Status::napi_ok {
            return;
        }
        let mut function: sys::napi_value = ptr::null_mut();
        let mut receiver: sys::napi_value = ptr::null_mut();
        let mut result: sys::napi_value = ptr::null_mut();
        if sys::napi_get_reference_value(env, ctx.js, &mut function) == sys::Status::napi_ok
            && !function.is_null()
            && sys::napi_get_global(env, &mut receiver) == sys::Status::napi_ok
        {
            let status = sys::napi_make_callback(
                env,
                ctx.async_context,
                receiver,
                function,
                0,
                ptr::null(),
                &mut result,
            );
            if status == sys::Status::napi_pending_exception {
                let mut error: sys::napi_value = ptr::null_mut();
                if sys::napi_get_and_clear_last_exception(env, &mut error) == sys::Status::napi_ok {
                    sys::napi_fatal_exception(env, error);
                }
            }
        }
        sys::napi_close_handle_scope(env, scope);
    }
}

unsafe extern "C" fn on_close(handle: *mut c_void) {
    // SAFETY: the handle's data holds the strong count `ReadyWatch::start` gave it.
    let ctx = unsafe { Rc::from_raw(ctx_of(handle)) };
    // SAFETY: on the loop's thread, the environment not yet gone (a teardown waits for
    // the cleanup hook removed below); neither is used after this.
    unsafe {
        sys::napi_delete_reference(ctx.env, ctx.js);
        sys::napi_async_destroy(ctx.env, ctx.async_context);
    }
    let cleanup = ctx.cleanup.replace(ptr::null_mut());
    if !cleanup.is_null() {
        // SAFETY: the hook was added with this handle and not removed yet; removing it
        // tells a teardown that waits for it that the handle is gone.
        unsafe { sys::napi_remove_async_cleanup_hook(cleanup) };
    }
}

unsafe extern "C" fn on_teardown(_hook: sys::napi_async_cleanup_hook_handle, arg: *mut c_void) {
    // SAFETY: `arg` is the Ctx, alive while the handle is (on_close removes this hook
    // before the handle's count is dropped).
    let ctx = unsafe { &*(arg as *const Ctx) };
    if let Some(uv) = uv() {
        ctx.close(uv);
    }
}

impl ReadyWatch {
    /// Watches `fd` on `env`'s event loop and calls `on_ready` on the JS thread each time
    /// it is readable, then, when it returns `true`, the JS function `js` (no arguments).
    /// The watch does not keep the loop alive. `None` where libuv's functions are not
    /// available or refuse the descriptor.
    pub fn start(
        env: &Env,
        fd: i32,
        on_ready: Box<dyn Fn() -> bool>,
        js: sys::napi_value,
    ) -> Option<ReadyWatch> {
        let uv = uv()?;
        let event_loop = env.get_uv_event_loop().ok()?;
        // SAFETY: plain function returning a size.
        let size = unsafe { (uv.handle_size)(UV_POLL) };
        if size == 0 {
            return None;
        }
        let raw_env = env.raw();
        let mut js_ref: sys::napi_ref = ptr::null_mut();
        let mut async_context: sys::napi_async_context = ptr::null_mut();
        let mut name: sys::napi_value = ptr::null_mut();
        // SAFETY: on the JS thread of `env`, with `js` a live value of this call's scope;
        // the out-pointers are valid locals. On failure what was created is released.
        unsafe {
            if sys::napi_create_reference(raw_env, js, 1, &mut js_ref) != sys::Status::napi_ok {
                return None;
            }
            let named = sys::napi_create_string_utf8(
                raw_env,
                c"doublewrite:kernelCompletion".as_ptr(),
                28,
                &mut name,
            );
            if named != sys::Status::napi_ok
                || sys::napi_async_init(raw_env, ptr::null_mut(), name, &mut async_context)
                    != sys::Status::napi_ok
            {
                sys::napi_delete_reference(raw_env, js_ref);
                return None;
            }
        }
        let ctx = Rc::new(Ctx {
            // A raw allocation, not a `Box` field: libuv writes it while `Ctx` is shared.
            handle: ptr::NonNull::from(Box::leak(vec![0u64; size.div_ceil(8)].into_boxed_slice())),
            on_ready,
            env: raw_env,
            js: js_ref,
            async_context,
            closing: Cell::new(false),
            cleanup: Cell::new(ptr::null_mut()),
        });
        let handle = ctx.handle_ptr();
        // SAFETY: `handle` is writable memory of uv_handle_size(UV_POLL) bytes, aligned
        // for a pointer, alive as long as `ctx`; `event_loop` is this thread's loop.
        if unsafe { (uv.poll_init)(event_loop.cast(), handle, fd) } != 0 {
            // SAFETY: as above; nothing else holds them.
            unsafe {
                sys::napi_delete_reference(raw_env, js_ref);
                sys::napi_async_destroy(raw_env, async_context);
            }
            return None;
        }
        // From here the handle exists and must be closed: its data holds one count.
        // SAFETY: `data` is the handle's first field.
        unsafe { *(handle as *mut *const Ctx) = Rc::into_raw(ctx.clone()) };
        let watch = ReadyWatch { ctx };
        let mut cleanup: sys::napi_async_cleanup_hook_handle = ptr::null_mut();
        // SAFETY: the env is the caller's; the hook's argument outlives the hook (above).
        let status = unsafe {
            sys::napi_add_async_cleanup_hook(
                env.raw(),
                Some(on_teardown),
                Rc::as_ptr(&watch.ctx) as *mut c_void,
                &mut cleanup,
            )
        };
        if status != sys::Status::napi_ok {
            watch.ctx.close(uv);
            return None;
        }
        watch.ctx.cleanup.set(cleanup);
        // SAFETY: an initialised handle; unref'd, it does not keep the loop alive (the
        // TS layer does while appends are outstanding).
        unsafe { (uv.unref)(handle) };
        // SAFETY: an initialised poll handle and a callback of the right signature.
        if unsafe { (uv.poll_start)(handle, UV_READABLE, on_readable) } != 0 {
            return None; // dropping `watch` closes the handle
        }
        Some(watch)
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        if let Some(uv) = uv() {
            self.ctx.close(uv);
        }
    }
}
