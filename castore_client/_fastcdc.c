/* FastCDC cut-point search for castore_client.chunking, with the GIL released.
 *
 * This scan is the hot loop of every blob a server receives. The fastcdc package's loop holds
 * the GIL and wants each window in one contiguous buffer; this one lets gRPC and the hashing
 * threads run meanwhile, and keeps its state between calls so that a chunk may span received
 * pieces without first copying them together. Its cut points are exactly the package's (which
 * real castore servers share); the tests compare the two on every kind of input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* FastCDC's gear table, as the fastcdc package has it. */
static const uint32_t GEAR[256] = {
    1553318008u, 574654857u, 759734804u, 310648967u, 1393527547u, 1195718329u,
    694400241u, 1154184075u, 1319583805u, 1298164590u, 122602963u, 989043992u,
    1918895050u, 933636724u, 1369634190u, 1963341198u, 1565176104u, 1296753019u,
    1105746212u, 1191982839u, 1195494369u, 29065008u, 1635524067u, 722221599u,
    1355059059u, 564669751u, 1620421856u, 1100048288u, 1018120624u, 1087284781u,
    1723604070u, 1415454125u, 737834957u, 1854265892u, 1605418437u, 1697446953u,
    973791659u, 674750707u, 1669838606u, 320299026u, 1130545851u, 1725494449u,
    939321396u, 748475270u, 554975894u, 1651665064u, 1695413559u, 671470969u,
    992078781u, 1935142196u, 1062778243u, 1901125066u, 1935811166u, 1644847216u,
    744420649u, 2068980838u, 1988851904u, 1263854878u, 1979320293u, 111370182u,
    817303588u, 478553825u, 694867320u, 685227566u, 345022554u, 2095989693u,
    1770739427u, 165413158u, 1322704750u, 46251975u, 710520147u, 700507188u,
    2104251000u, 1350123687u, 1593227923u, 1756802846u, 1179873910u, 1629210470u,
    358373501u, 807118919u, 751426983u, 172199468u, 174707988u, 1951167187u,
    1328704411u, 2129871494u, 1242495143u, 1793093310u, 1721521010u, 306195915u,
    1609230749u, 1992815783u, 1790818204u, 234528824u, 551692332u, 1930351755u,
    110996527u, 378457918u, 638641695u, 743517326u, 368806918u, 1583529078u,
    1767199029u, 182158924u, 1114175764u, 882553770u, 552467890u, 1366456705u,
    934589400u, 1574008098u, 1798094820u, 1548210079u, 821697741u, 601807702u,
    332526858u, 1693310695u, 136360183u, 1189114632u, 506273277u, 397438002u,
    620771032u, 676183860u, 1747529440u, 909035644u, 142389739u, 1991534368u,
    272707803u, 1905681287u, 1210958911u, 596176677u, 1380009185u, 1153270606u,
    1150188963u, 1067903737u, 1020928348u, 978324723u, 962376754u, 1368724127u,
    1133797255u, 1367747748u, 1458212849u, 537933020u, 1295159285u, 2104731913u,
    1647629177u, 1691336604u, 922114202u, 170715530u, 1608833393u, 62657989u,
    1140989235u, 381784875u, 928003604u, 449509021u, 1057208185u, 1239816707u,
    525522922u, 476962140u, 102897870u, 132620570u, 419788154u, 2095057491u,
    1240747817u, 1271689397u, 973007445u, 1380110056u, 1021668229u, 12064370u,
    1186917580u, 1017163094u, 597085928u, 2018803520u, 1795688603u, 1722115921u,
    2015264326u, 506263638u, 1002517905u, 1229603330u, 1376031959u, 763839898u,
    1970623926u, 1109937345u, 524780807u, 1976131071u, 905940439u, 1313298413u,
    772929676u, 1578848328u, 1108240025u, 577439381u, 1293318580u, 1512203375u,
    371003697u, 308046041u, 320070446u, 1252546340u, 568098497u, 1341794814u,
    1922466690u, 480833267u, 1060838440u, 969079660u, 1836468543u, 2049091118u,
    2023431210u, 383830867u, 2112679659u, 231203270u, 1551220541u, 1377927987u,
    275637462u, 2110145570u, 1700335604u, 738389040u, 1688841319u, 1506456297u,
    1243730675u, 258043479u, 599084776u, 41093802u, 792486733u, 1897397356u,
    28077829u, 1520357900u, 361516586u, 1119263216u, 209458355u, 45979201u,
    363681532u, 477245280u, 2107748241u, 601938891u, 244572459u, 1689418013u,
    1141711990u, 1485744349u, 1181066840u, 1950794776u, 410494836u, 1445347454u,
    2137242950u, 852679640u, 1014566730u, 1999335993u, 1871390758u, 1736439305u,
    231222289u, 603972436u, 783045542u, 370384393u, 184356284u, 709706295u,
    1453549767u, 591603172u, 768512391u, 854125182u,
};

/* Below this many bytes, releasing and retaking the GIL costs more than it gains. */
#define RELEASE_GIL_FROM 65536

static Py_ssize_t
min_ssize(Py_ssize_t a, Py_ssize_t b)
{
    return a < b ? a : b;
}

/* scan(data, start, position, pattern, min_size, center_size, max_size, mask_s, mask_l)
 *     -> (end, pattern, cut)
 *
 * Feeds data[start:] to the chunk being cut, which already holds `position` bytes and whose
 * rolling hash is `pattern`. Returns the index just past the last byte consumed, the hash so
 * far, and whether the chunk ends at that index. Bytes before min_size do not enter the hash;
 * bytes before center_size are tested with mask_s, later ones with mask_l; a chunk ends at
 * max_size at the latest.
 */
static PyObject *
scan(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, position, min_size, center_size, max_size;
    unsigned long pattern_arg, mask_s_arg, mask_l_arg;

    if (!PyArg_ParseTuple(args, "y*nnknnnkk", &view, &start, &position, &pattern_arg,
                          &min_size, &center_size, &max_size, &mask_s_arg, &mask_l_arg))
        return NULL;
    if (start < 0 || start > view.len || position < 0 || position >= max_size
        || min_size < 0 || center_size < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan: offsets or sizes out of range");
        return NULL;
    }

    const uint8_t *data = (const uint8_t *)view.buf;
    const Py_ssize_t len = view.len;
    const uint32_t mask_s = (uint32_t)mask_s_arg, mask_l = (uint32_t)mask_l_arg;
    uint32_t pattern = (uint32_t)pattern_arg;
    /* The chunk offset of data[i] is base + i. */
    const Py_ssize_t base = position - start;
    Py_ssize_t i = start;
    int cut = 0;

    if (base + i < min_size)
        i = min_ssize(min_size - base, len);

    PyThreadState *saved = NULL;
    if (len - i >= RELEASE_GIL_FROM)
        saved = PyEval_SaveThread();

    /* Two loops rather than a mask chosen per byte: this is the hot path. */
    Py_ssize_t stop = min_ssize(len, min_ssize(center_size, max_size) - base);
    while (i < stop) {
        pattern = (pattern >> 1) + GEAR[data[i++]];
        if (!(pattern & mask_s)) {
            cut = 1;
            break;
        }
    }
    if (!cut) {
        stop = min_ssize(len, max_size - base);
        while (i < stop) {
            pattern = (pattern >> 1) + GEAR[data[i++]];
            if (!(pattern & mask_l)) {
                cut = 1;
                break;
            }
        }
        if (base + i >= max_size)
            cut = 1;
    }

    if (saved != NULL)
        PyEval_RestoreThread(saved);
    PyBuffer_Release(&view);
    return Py_BuildValue("nkO", i, (unsigned long)pattern, cut ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Advance a FastCDC cut-point search over a buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastcdc", "FastCDC cut-point search (see chunking.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastcdc(void)
{
    return PyModule_Create(&module);
}
