/*
 * launcher.c - an executable that is Python, under any name, with any argv.
 *
 * tests/simhost copies this binary to the names the simulated Ollama era uses (`ollama`,
 * `ollama_llama_server`, `llama-server`, ...). The kernel then shows the copy's basename as
 * comm and the argv it was started with as /proc/PID/cmdline, exactly as for the real
 * programs. The embedded interpreter does not parse argv (`--model` is not an interpreter
 * option here); it runs the module SIMHOST_MODULE with sys.argv = sys.orig_argv = our argv.
 *
 * Build-time definitions (set by tests/simhost/build.py):
 *   SIMHOST_PYTHON_EXECUTABLE  the interpreter whose stdlib to use (program_name)
 *   SIMHOST_PYTHON_HOME        its prefix (home)
 *   SIMHOST_SEARCH_PATH        sys.path, ':'-separated: the repository root, stdlib, lib-dynload
 *   SIMHOST_MODULE             the module to run, e.g. "tests.simhost.entry"
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

static int fail(PyConfig *config, PyStatus status) {
    PyConfig_Clear(config);
    if (PyStatus_IsExit(status))
        return status.exitcode;
    Py_ExitStatusException(status);
}

static PyStatus set_search_path(PyConfig *config) {
    PyStatus status = PyStatus_Ok();
    char *paths = strdup(SIMHOST_SEARCH_PATH), *save = NULL;
    config->module_search_paths_set = 1;
    for (char *p = strtok_r(paths, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
        wchar_t *wide = Py_DecodeLocale(p, NULL);
        if (!wide) {
            status = PyStatus_NoMemory();
            break;
        }
        status = PyWideStringList_Append(&config->module_search_paths, wide);
        PyMem_RawFree(wide);
        if (PyStatus_Exception(status))
            break;
    }
    free(paths);
    return status;
}

int main(int argc, char **argv) {
    PyConfig config;
    PyStatus status;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;        /* argv belongs to the simulated program, not to Python */
    config.use_environment = 0;   /* PYTHON* variables of the test run must not leak in */
    config.site_import = 0;       /* stdlib only: faster start, nothing from site-packages */
    config.user_site_directory = 0;
    config.safe_path = 1;

    status = PyConfig_SetBytesString(&config, &config.program_name, SIMHOST_PYTHON_EXECUTABLE);
    if (PyStatus_Exception(status))
        return fail(&config, status);
    status = PyConfig_SetBytesString(&config, &config.home, SIMHOST_PYTHON_HOME);
    if (PyStatus_Exception(status))
        return fail(&config, status);
    status = PyConfig_SetString(&config, &config.run_module, L"" SIMHOST_MODULE);
    if (PyStatus_Exception(status))
        return fail(&config, status);
    status = set_search_path(&config);
    if (PyStatus_Exception(status))
        return fail(&config, status);
    status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (PyStatus_Exception(status))
        return fail(&config, status);

    status = Py_InitializeFromConfig(&config);
    if (PyStatus_Exception(status))
        return fail(&config, status);
    PyConfig_Clear(&config);
    return Py_RunMain();
}
