# Installs the current build into a scratch prefix, then configures, builds and runs the
# downstream consumer against it through find_package(eqflow).
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
execute_process(COMMAND ${CMAKE_COMMAND} --install ${EQFLOW_BINARY_DIR} --prefix ${prefix} --config ${BUILD_CONFIG}
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${EQFLOW_CONSUMER_SOURCE} -B ${WORK_DIR}/build -G ${CMAKE_GENERATOR}
                        -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the consumer failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer failed (${rc})")
endif()
execute_process(COMMAND ${WORK_DIR}/build/consumer RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer failed (${rc})")
endif()
# Move the install somewhere else: the library must find its data beside itself, not in the
# source tree or the prefix it was configured for.
set(moved ${WORK_DIR}/moved)
file(RENAME ${prefix} ${moved})
file(GLOB_RECURSE _libs LIST_DIRECTORIES false ${moved}/*/libeqflow.so*)
list(GET _libs 0 _lib)
get_filename_component(_libdir ${_lib} DIRECTORY)
execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=EQFLOW_DATA_DIR LD_LIBRARY_PATH=${_libdir}
                        ${WORK_DIR}/build/consumer ${moved}/
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer of the moved install failed (${rc})")
endif()
