# Fault injection (src/fault/fault.h says what it does). Included by CMakeLists.txt once
# the library's object target pier_objs (and the loop-only pier_loop) exist; PIER_FAULTS
# is its option.
#
# On: every library object gets fault.h force-included, which turns the allocations and
# system calls into the wrappers of src/fault/fault.c; that file itself is compiled
# without the macros, so its wrappers call the real functions. pier_loop (src/loop and
# src/base, for the loop's own tests) gets the same, with fault.c added to it.
# Off: src/fault/ is taken out of the library altogether, so the library is byte for
# byte what it would be without the module.
set(PIER_FAULT_C ${CMAKE_SOURCE_DIR}/src/fault/fault.c)
if(PIER_FAULTS)
  set_source_files_properties(${PIER_FAULT_C} PROPERTIES COMPILE_DEFINITIONS PIER_FAULT_IMPL=1)
  foreach(target pier_objs pier_loop)
    if(TARGET ${target})
      target_compile_definitions(${target} PRIVATE PIER_FAULTS=1)
      target_compile_options(${target} PRIVATE -include ${CMAKE_SOURCE_DIR}/src/fault/fault.h)
    endif()
  endforeach()
  if(TARGET pier_loop)
    target_sources(pier_loop PRIVATE ${PIER_FAULT_C})
  endif()
else()
  get_target_property(pier_fault_srcs pier_objs SOURCES)
  list(FILTER pier_fault_srcs EXCLUDE REGEX "/src/fault/")
  set_property(TARGET pier_objs PROPERTY SOURCES ${pier_fault_srcs})
endif()
