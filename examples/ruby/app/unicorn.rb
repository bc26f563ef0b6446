# Unicorn: `unicorn -c app/unicorn.rb -E production app/config.ru` (PORT from the environment).
#
# The agent is started ONCE, in the master, after preloading the app and before the first fork.
# Each worker inherits it: the library closes the inherited lock/socket descriptors in the child
# and starts afresh there, as a client, on the child's first call. The master leads at first; once
# every worker is a connected client it stops the agent, which hands the leadership to a worker.
require File.expand_path("boot", __dir__)

worker_processes Integer(ENV.fetch("WEB_CONCURRENCY", "4"))
listen "127.0.0.1:#{ENV.fetch("PORT")}"
preload_app true
timeout 30

# before_fork runs in the master before every fork; only the first one starts the agent (a
# replacement worker forked after the hand-over starts its own, see ExampleBoot.worker_started).
master_started = false
before_fork do |server, _worker|
  next if master_started
  master_started = true
  ExampleBoot.master_started("unicorn")
  ExampleBoot.hand_over_when_ready("unicorn", server.worker_processes)
end

after_fork do |_server, worker|
  ExampleBoot.worker_started("unicorn", worker.nr, start: false)
  # after_worker_exit runs in the master; the worker's own exit (a graceful QUIT ends the worker
  # loop, then `exit`) runs at_exit handlers registered in the worker.
  at_exit { ExampleBoot.worker_stopping }
end
