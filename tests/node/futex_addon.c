/* A native addon that waits on a futex, built by the tests with
 * -fomit-frame-pointer (like most addons): loopbpf must still find the
 * JavaScript that called it. Node's headers cannot be downloaded where the
 * tests run, so the few N-API functions used are declared here. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

napi_status napi_create_function(napi_env env, const char *utf8name, size_t length,
                                 napi_callback cb, void *data, napi_value *result);
napi_status napi_set_named_property(napi_env env, napi_value object, const char *utf8name,
                                    napi_value value);
napi_status napi_get_undefined(napi_env env, napi_value *result);

static volatile uint32_t word;

/* Two native frames of their own between the futex and N-API, kept apart. */
__attribute__((noinline)) static long wait_on_word(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
    __asm__ volatile("" ::: "memory");
    return r;
}

__attribute__((noinline)) static long wait_twice(long ms)
{
    long r = wait_on_word(ms / 2);
    r += wait_on_word(ms - ms / 2);
    __asm__ volatile("" ::: "memory");
    return r;
}

static napi_value futex_wait_300ms(napi_env env, napi_callback_info info)
{
    (void)info;
    wait_twice(300);
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    return undefined;
}

napi_value napi_register_module_v1(napi_env env, napi_value exports)
{
    napi_value fn;
    if (napi_create_function(env, "futexWait300ms", (size_t)-1, futex_wait_300ms, NULL, &fn) == 0)
        napi_set_named_property(env, exports, "futexWait300ms", fn);
    return exports;
}
