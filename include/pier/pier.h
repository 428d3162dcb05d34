/* pier: asynchronous network servers on Linux. The umbrella header. */
#ifndef PIER_H
#define PIER_H

#include "loop.h"
#include "metrics.h"
#include "net.h"
#include "tls.h"
#if __has_include("msg.h")
#include "msg.h"
#endif
#if __has_include("http.h")
#include "http.h"
#endif
#if __has_include("ws.h")
#include "ws.h"
#endif

#endif
