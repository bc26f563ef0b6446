# Puma in cluster mode: `puma -C app/puma.rb app/config.ru` (PORT from the environment).
require File.expand_path("boot", __dir__)

workers Integer(ENV.fetch("WEB_CONCURRENCY", "4"))
threads 1, 4
bind "tcp://127.0.0.1:#{ENV.fetch("PORT")}"
environment "production"
preload_app!

# Each worker starts the agent after the fork (the Unicorn configuration shows the other way:
# started once in the master, inherited by the workers). The workers elect one leader among them.
on_worker_boot do |index|
  ExampleBoot.worker_started("puma", index)
end

on_worker_shutdown do |_index|
  ExampleBoot.worker_stopping
end
